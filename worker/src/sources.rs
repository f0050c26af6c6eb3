//! Local sources: the build context and named contexts, wherever their files are.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow};

/// Where a build's local sources (the context, `--build-context` names) come from:
/// directories on this machine, or copies that a remote builder syncs from its client.
pub trait LocalSources: Send + Sync {
    /// The directory holding local source `name`, with at least every file that
    /// `excludes` (`.dockerignore` patterns) leaves in; the worker applies the patterns
    /// itself too. Called whenever a step reads the source, so an implementation that
    /// transfers files must do it once per build.
    fn directory(&self, name: &str, excludes: &[String]) -> Result<PathBuf>;
}

impl<T: LocalSources + ?Sized> LocalSources for Arc<T> {
    fn directory(&self, name: &str, excludes: &[String]) -> Result<PathBuf> {
        (**self).directory(name, excludes)
    }
}

/// Local sources that are directories on this machine, by name.
#[derive(Debug, Clone, Default)]
pub struct LocalDirectories(pub HashMap<String, PathBuf>);

impl LocalSources for LocalDirectories {
    fn directory(&self, name: &str, _excludes: &[String]) -> Result<PathBuf> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("no local context named {name:?} was provided"))
    }
}
