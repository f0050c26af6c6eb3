//! Build arguments: the global (meta) ARGs before the first FROM, the predefined platform
//! args, and the proxy args that reach RUN without being declared.

use kiln_solver::Platform;

use super::Lowerer;
use crate::error::{Error, Result};
use crate::instructions::InstructionKind;
use crate::shell::Lexer;

/// Args every build defines in the global scope; a stage sees them after `ARG NAME`.
pub const BUILTIN_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// Proxy args: given with `--build-arg`, they reach every RUN's environment without an ARG,
/// and stay out of the cache key and the image history (as in Docker).
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The predefined platform args for a build.
fn platform_args(build: &Platform, target: &Platform) -> Vec<(String, String)> {
    let mut args = Vec::new();
    for (prefix, p) in [("BUILD", build), ("TARGET", target)] {
        args.push((format!("{prefix}PLATFORM"), p.to_string()));
        args.push((format!("{prefix}OS"), p.os.clone()));
        args.push((format!("{prefix}ARCH"), p.architecture.clone()));
        args.push((format!("{prefix}VARIANT"), p.variant.clone()));
    }
    args
}

impl Lowerer<'_> {
    /// Evaluates the global ARGs in order: a `--build-arg` wins over the default, and a
    /// default is expanded with the global args before it.
    pub(super) fn evaluate_meta_args(&mut self) -> Result<Vec<(String, Option<String>)>> {
        let options = self.options;
        let lexer = Lexer::new(self.dockerfile.escape);
        let mut args: Vec<(String, Option<String>)> =
            platform_args(&options.build_platform, &options.target_platform)
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect();
        for instruction in &self.dockerfile.meta_args {
            let InstructionKind::Arg(decls) = &instruction.kind else {
                continue;
            };
            for decl in decls {
                let value = if let Some(v) = options.build_args.get(&decl.name) {
                    self.used_args.insert(decl.name.clone());
                    Some(v.clone())
                } else if let Some(default) = &decl.default {
                    let env = valued(&args);
                    Some(
                        lexer
                            .process_word(default, &env)
                            .map_err(|e| Error::at(e.message, instruction.location))?,
                    )
                } else {
                    None
                };
                set(&mut args, &decl.name, value);
            }
        }
        Ok(args)
    }

    /// The value a stage's `ARG name` (with `default`, already expanded) takes: the build arg,
    /// else the default, else the global arg's value.
    pub(super) fn stage_arg_value(
        &mut self,
        name: &str,
        default: Option<String>,
    ) -> Option<String> {
        if let Some(v) = self.options.build_args.get(name) {
            self.used_args.insert(name.to_string());
            return Some(v.clone());
        }
        default.or_else(|| {
            self.global_args
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        })
    }

    /// Proxy args given with `--build-arg`, as `KEY=VALUE`.
    pub(super) fn proxy_env(&self) -> Vec<String> {
        PROXY_ARGS
            .iter()
            .filter_map(|k| self.options.build_args.get(*k).map(|v| format!("{k}={v}")))
            .collect()
    }
}

/// The args that have a value, for expansion.
pub(super) fn valued(args: &[(String, Option<String>)]) -> Vec<(String, String)> {
    args.iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect()
}

/// Sets `name` in an ordered list, replacing an earlier entry.
pub(super) fn set<V>(list: &mut Vec<(String, V)>, name: &str, value: V) {
    match list.iter_mut().find(|(k, _)| k == name) {
        Some(entry) => entry.1 = value,
        None => list.push((name.to_string(), value)),
    }
}
