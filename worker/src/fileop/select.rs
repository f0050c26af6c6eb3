//! Which files a COPY/ADD takes from its source, and where each one goes.
//!
//! The same selection drives the copy itself and the content checksum in
//! the cache key, so a file the COPY does not select can never change the
//! key.

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln_patterns::{PatternMatcher, clean, glob_match, has_wildcards};
use kiln_solver::CopyAction;

use crate::rootfs::resolve_in_root;

/// A tree COPY reads from: the build context or another filesystem.
#[derive(Debug, Clone, Copy)]
pub struct SourceTree<'a> {
    /// Host directory of the tree's root.
    pub root: &'a Path,
    /// `.dockerignore` patterns: matching paths do not exist for COPY.
    pub ignore: Option<&'a PatternMatcher>,
    /// The build context: nothing may escape it (`..` or symlinks), and
    /// owners are not carried over.
    pub is_context: bool,
    /// For an overlay view, its layer directories, top first: two names are hard links
    /// only when one layer holds them as such (kiln's COPY --from links files to the layer
    /// they came from, which the image never shows). Empty for a plain directory.
    pub layers: &'a [PathBuf],
}

impl SourceTree<'_> {
    /// What identifies `item`'s file among hard links: its inode, and for an overlay view
    /// the layer that provides it.
    pub fn link_key(&self, item: &Item) -> (u64, u64) {
        let Ok(rel) = item.host.strip_prefix(self.root) else {
            return (item.meta.dev(), item.meta.ino());
        };
        if self.layers.is_empty() {
            return (item.meta.dev(), item.meta.ino());
        }
        self.layers
            .iter()
            .enumerate()
            .find_map(|(i, layer)| {
                let meta = fs::symlink_metadata(layer.join(rel)).ok()?;
                Some((i as u64, meta.ino()))
            })
            .unwrap_or((u64::MAX, item.meta.ino()))
    }
}

/// One selected entry.
#[derive(Debug)]
pub struct Item {
    /// Where it is on the host.
    pub host: PathBuf,
    /// Path inside the destination filesystem (absolute, unresolved).
    pub dest: String,
    /// Its metadata (symlinks not followed, except a followed top-level source).
    pub meta: Metadata,
    /// Path relative to the source root, for checksums and errors.
    pub rel: String,
    /// Named by the source path itself, not found inside a directory it names (only such
    /// files are archives that ADD extracts).
    pub is_source: bool,
    /// Which of the copy's sources (a wildcard's matches, in order) it comes from: hard
    /// links are kept among one source's files only, as fsutil copies each match on its
    /// own.
    pub source: usize,
}

/// What a copy takes from its source.
#[derive(Debug, Default)]
pub struct Selection {
    /// The entries it copies, parents before children.
    pub items: Vec<Item>,
    /// Destinations that directories' contents go to: made (as `mkdir -p`) even when a
    /// directory is empty, as fsutil's copy makes them.
    pub content_dests: Vec<String>,
}

/// What `action` copies from `tree`.
///
/// `dest_root` is the destination filesystem, consulted for whether a
/// destination without a trailing `/` is an existing directory (then a file
/// goes into it).
pub fn select(
    tree: &SourceTree<'_>,
    action: &CopyAction,
    dest_root: Option<&Path>,
) -> Result<Selection> {
    if action.parents && action.include_patterns.iter().any(String::is_empty) {
        // As BuildKit v0.32: `COPY --parents ./ dst` and `COPY --parents dir/./ dst` ask
        // for the pattern "" below the pivot, which matches nothing, and the path they
        // require is then not found.
        bail!("\"{}\": not found", clean(&format!("/{}", action.src)));
    }
    let sources = matching_sources(tree, action)?;
    // The destination with its symlinks resolved, as BuildKit's copy resolves it: COPY onto
    // a symlink writes where the link points.
    let resolved_dest = dest_root
        .map(|root| resolve_in_root(root, &action.dest, true).map(|path| (root, path)))
        .transpose()?;
    let dest_exists_as_dir = resolved_dest
        .as_ref()
        .is_some_and(|(_, path)| path.is_dir());
    // As BuildKit copies each match of a wildcard in turn onto the destination: a file
    // replaces a file there, and once a directory's contents went there it is a directory.
    let mut dest_is_dir = action.dest.ends_with('/') || action.parents || dest_exists_as_dir;
    let dest_base = match &resolved_dest {
        Some((root, path)) => {
            let inside = path.strip_prefix(root).unwrap_or(path);
            clean(&format!("/{}", inside.to_string_lossy()))
        }
        None => clean(&format!("/{}", action.dest)),
    };
    let excludes = PatternMatcher::new(&action.exclude_patterns)?;
    let includes = PatternMatcher::new(&action.include_patterns)?;
    let mut items = Vec::new();
    let mut content_dests = Vec::new();
    for (source, rel) in sources.into_iter().enumerate() {
        let host = resolve_source(tree, &rel, action.follow_symlinks)?;
        // Through a symlink, what the source is is where the link leads: its ignore rules
        // apply there, as in BuildKit's copy of the context, which lacks what is ignored.
        let real = host
            .strip_prefix(tree.root)
            .map_or_else(|_| rel.clone(), |p| p.to_string_lossy().into_owned());
        if real != rel && !in_context(tree, &real)? {
            bail!("\"/{rel}\": not found");
        }
        let meta = fs::symlink_metadata(&host).with_context(|| format!("\"/{rel}\": not found"))?;
        let walker = Walker {
            tree,
            excludes: &excludes,
            includes: &includes,
            top: &real,
            source,
        };
        if meta.is_dir() && action.dir_contents_only {
            if !content_dests.contains(&dest_base) {
                content_dests.push(dest_base.clone());
            }
            walker.walk(&host, &dest_base, "", &mut items)?;
            dest_is_dir = true;
            continue;
        }
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        let dest = if dest_is_dir {
            let kept = if action.parents { rel.as_str() } else { name };
            join(&dest_base, kept)
        } else {
            dest_base.clone()
        };
        let is_dir = meta.is_dir();
        items.push(Item {
            host: host.clone(),
            dest: dest.clone(),
            meta,
            rel: rel.clone(),
            is_source: true,
            source,
        });
        if is_dir {
            walker.walk(&host, &dest, "", &mut items)?;
        }
    }
    Ok(Selection {
        items,
        content_dests,
    })
}

/// The source paths `action.src` names: itself, or what its wildcards
/// match (sorted), relative to the tree's root.
fn matching_sources(tree: &SourceTree<'_>, action: &CopyAction) -> Result<Vec<String>> {
    let cleaned = clean(action.src.trim_start_matches('/'));
    if cleaned == ".." || cleaned.starts_with("../") {
        bail!("forbidden path outside the build context: {}", action.src);
    }
    let rel = if cleaned == "." {
        String::new()
    } else {
        cleaned
    };
    if !(action.allow_wildcard && has_wildcards(&rel)) {
        if !in_context(tree, &rel)? {
            bail!("\"/{rel}\": not found");
        }
        return Ok(vec![rel]);
    }
    // Walk from the longest wildcard-free prefix, matching whole paths.
    let parts: Vec<&str> = rel.split('/').collect();
    let fixed = parts.iter().take_while(|p| !has_wildcards(p)).count();
    let mut found = Vec::new();
    let mut frontier = vec![parts[..fixed].join("/")];
    for pattern in &parts[fixed..] {
        let mut next = Vec::new();
        for dir in frontier {
            let Ok(host) = resolve_source(tree, &dir, true) else {
                continue;
            };
            let Ok(entries) = fs::read_dir(&host) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                if glob_match(pattern, &name)? {
                    let candidate = join_rel(&dir, &name);
                    if in_context(tree, &candidate)? {
                        next.push(candidate);
                    }
                }
            }
        }
        frontier = next;
    }
    found.extend(frontier);
    if found.is_empty() && !action.allow_empty_wildcard {
        bail!(
            "no source files were specified (nothing matches {})",
            action.src
        );
    }
    Ok(found)
}

/// Whether `rel` is part of the tree as `.dockerignore` leaves it: not ignored, or an
/// ignored directory that an exception (`!dir/file`) brings something back inside (Docker
/// sends such a directory for what it holds).
fn in_context(tree: &SourceTree<'_>, rel: &str) -> Result<bool> {
    let Some(ignore) = tree.ignore.filter(|_| !rel.is_empty()) else {
        return Ok(true);
    };
    if !ignore.matches_or_parent_matches(rel) {
        return Ok(true);
    }
    if !ignore.exclusions() {
        return Ok(false);
    }
    fn kept_inside(host: &Path, rel: &str, ignore: &PatternMatcher) -> Result<bool> {
        let Ok(entries) = fs::read_dir(host) else {
            return Ok(false);
        };
        for entry in entries {
            let entry = entry?;
            let child = join_rel(rel, &entry.file_name().to_string_lossy());
            if !ignore.matches_or_parent_matches(&child)
                || (entry.file_type()?.is_dir() && kept_inside(&entry.path(), &child, ignore)?)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
    match resolve_source(tree, rel, true) {
        Ok(host) if host.is_dir() => kept_inside(&host, rel, ignore),
        _ => Ok(false),
    }
}

/// The host path of `rel` in the tree. Symlinks resolve inside the tree, the build
/// context included, as BuildKit resolves them in its copy of the context: an absolute
/// target is taken from the tree's root and `..` stops there, so nothing outside is read.
fn resolve_source(tree: &SourceTree<'_>, rel: &str, follow_last: bool) -> Result<PathBuf> {
    resolve_in_root(tree.root, rel, follow_last)
}

/// The paths under `root` (relative, parents first) that `ignore` takes away: an ignored
/// directory as a whole, unless exclusion patterns (`!keep`) bring back something inside
/// it; then only what stays ignored inside it.
pub fn ignored_paths(root: &Path, ignore: &PatternMatcher) -> Result<Vec<String>> {
    fn walk(
        host: &Path,
        below: &str,
        ignore: &PatternMatcher,
        hidden: &mut Vec<String>,
    ) -> Result<bool> {
        let mut kept_any = false;
        let mut entries: Vec<fs::DirEntry> = fs::read_dir(host)
            .with_context(|| format!("cannot read {}", host.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = join_rel(below, &name);
            let child = host.join(&name);
            let ignored = ignore.matches_or_parent_matches(&rel);
            // The type comes with the directory entry: no stat per file.
            let is_dir = entry.file_type()?.is_dir();
            if ignored && !(is_dir && ignore.exclusions()) {
                hidden.push(rel);
                continue;
            }
            if !is_dir {
                kept_any = true;
                continue;
            }
            let start = hidden.len();
            let kept_inside = walk(&child, &rel, ignore, hidden)?;
            if ignored && !kept_inside {
                // Nothing inside came back: the directory goes as a whole.
                hidden.truncate(start);
                hidden.push(rel);
            } else {
                kept_any = true;
            }
        }
        Ok(kept_any)
    }
    let mut hidden = Vec::new();
    walk(root, "", ignore, &mut hidden)?;
    Ok(hidden)
}

struct Walker<'a> {
    tree: &'a SourceTree<'a>,
    excludes: &'a PatternMatcher,
    includes: &'a PatternMatcher,
    /// The copied source path, relative to the tree's root.
    top: &'a str,
    /// Its index among the copy's sources.
    source: usize,
}

impl Walker<'_> {
    /// Adds the contents of `host` (at `below` under the copied source) to
    /// `items`, placing them under `dest`.
    fn walk(&self, host: &Path, dest: &str, below: &str, items: &mut Vec<Item>) -> Result<()> {
        let mut entries: Vec<fs::DirEntry> = fs::read_dir(host)
            .with_context(|| format!("cannot read {}", host.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let sub = join_rel(below, &name);
            let rel = join_rel(self.top, &sub);
            let child = host.join(&name);
            // Relative to the directory's descriptor: no path walk per file.
            let meta = entry.metadata()?;
            let ignored = self
                .tree
                .ignore
                .is_some_and(|m| m.matches_or_parent_matches(&rel));
            let excluded = self.excludes.matches_or_parent_matches(&sub);
            let included = self.includes.patterns().is_empty()
                || self.includes.matches_or_parent_matches(&sub);
            let dest_child = join(dest, &name);
            if meta.is_dir() {
                let descend = (!ignored
                    || self.tree.ignore.is_some_and(PatternMatcher::exclusions))
                    && (!excluded || self.excludes.exclusions());
                let start = items.len();
                items.push(Item {
                    host: child.clone(),
                    dest: dest_child.clone(),
                    meta,
                    rel,
                    is_source: false,
                    source: self.source,
                });
                if descend {
                    self.walk(&child, &dest_child, &sub, items)?;
                }
                // A directory that is ignored, excluded or not included is still copied,
                // with its own metadata, for what it holds that is (as BuildKit does).
                let selected = !ignored && !excluded && included;
                if !selected && items.len() == start + 1 {
                    items.truncate(start);
                }
            } else if !ignored && !excluded && included {
                items.push(Item {
                    host: child,
                    dest: dest_child,
                    meta,
                    rel,
                    is_source: false,
                    source: self.source,
                });
            }
        }
        Ok(())
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}
