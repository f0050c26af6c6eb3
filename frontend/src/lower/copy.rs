//! COPY and ADD: file ops copying from the context, another stage, an image, a URL, a git
//! repository or a heredoc; `--link` copies onto an empty layer merged on top.

use kiln_cache::Digest;
use kiln_solver::{CopyAction, FileAction, FileOp, MergeOp, Op, SourceOp, VertexMeta};

use super::run::{Inputs, inline_document};
use super::stage::{StageState, clean_path, join_path, parse_chown};
use super::{Lowerer, Source};
use crate::error::{Error, Result};
use crate::instructions::{AddInstruction, CopyInstruction, Instruction, SourcesAndDest};
use crate::shell::Lexer;

/// What differs between COPY and ADD once flags are read.
struct CopyRequest<'i> {
    files: &'i SourcesAndDest,
    is_add: bool,
    from: Option<&'i str>,
    chown: Option<&'i str>,
    chmod: Option<&'i str>,
    link: bool,
    parents: bool,
    excludes: &'i [String],
    keep_git_dir: bool,
    checksum: Option<&'i str>,
    unpack: Option<bool>,
}

/// Lowers `COPY`.
pub(super) fn lower_copy(
    lowerer: &mut Lowerer<'_>,
    st: &mut StageState,
    instruction: &Instruction,
    copy: &CopyInstruction,
) -> Result<()> {
    let request = CopyRequest {
        files: &copy.files,
        is_add: false,
        from: copy.from.as_deref(),
        chown: copy.chown.as_deref(),
        chmod: copy.chmod.as_deref(),
        link: copy.link,
        parents: copy.parents,
        excludes: &copy.excludes,
        keep_git_dir: false,
        checksum: None,
        unpack: None,
    };
    lower_copy_request(lowerer, st, instruction, &request)
}

/// Lowers `ADD`.
pub(super) fn lower_add(
    lowerer: &mut Lowerer<'_>,
    st: &mut StageState,
    instruction: &Instruction,
    add: &AddInstruction,
) -> Result<()> {
    let request = CopyRequest {
        files: &add.files,
        is_add: true,
        from: None,
        chown: add.chown.as_deref(),
        chmod: add.chmod.as_deref(),
        link: add.link,
        parents: false,
        excludes: &add.excludes,
        keep_git_dir: add.keep_git_dir,
        checksum: add.checksum.as_deref(),
        unpack: add.unpack,
    };
    lower_copy_request(lowerer, st, instruction, &request)
}

fn lower_copy_request(
    lowerer: &mut Lowerer<'_>,
    st: &mut StageState,
    instruction: &Instruction,
    req: &CopyRequest<'_>,
) -> Result<()> {
    let loc = instruction.location;
    let err = |m: String| Error::at(m, loc);
    let name = if req.is_add { "ADD" } else { "COPY" };
    let raw_dest = st.expand(&req.files.dest, loc)?;
    let dest = destination(&st.workdir(), &raw_dest);
    let paths = req
        .files
        .paths
        .iter()
        .map(|p| st.expand(p, loc))
        .collect::<Result<Vec<_>>>()?;
    let chown = st.expand_opt(req.chown, loc)?.filter(|c| !c.is_empty());
    let chmod = st.expand_opt(req.chmod, loc)?.filter(|c| !c.is_empty());
    if let Some(mode) = &chmod {
        check_chmod(mode).map_err(err)?;
    }
    let excludes = req
        .excludes
        .iter()
        .map(|p| st.expand(p, loc))
        .collect::<Result<Vec<_>>>()?;
    let checksum = st.expand_opt(req.checksum, loc)?.filter(|c| !c.is_empty());
    if let Some(sum) = &checksum {
        if paths.len() != 1 || !req.files.contents.is_empty() {
            return Err(err(
                "checksum can't be specified for multiple sources".into()
            ));
        }
        if is_git(&paths[0]) {
            check_commit(sum).map_err(err)?;
        } else if is_http(&paths[0]) {
            check_digest(sum).map_err(err)?;
        } else {
            return Err(err("checksum requires HTTP(S) or Git sources".into()));
        }
    }
    let sources = paths.len() + req.files.contents.len();
    if sources > 1 && !dest.ends_with('/') {
        return Err(err(format!(
            "When using {name} with more than one source file, the destination must be a directory and end with a /"
        )));
    }

    let mut inputs = Inputs::default();
    let local_source = match req.from {
        Some(from) => {
            let from = st.expand(from, loc)?;
            let platform = st.platform.clone();
            Some(match lowerer.source(&from, st.index, &platform, loc)? {
                Source::Stage(state) => state.unwrap_or_else(|| empty_filesystem(lowerer)),
                Source::Image(d) => d,
            })
        }
        None if paths.iter().any(|p| !is_http(p) && !is_git(p)) => Some(lowerer.context()),
        None => None,
    };
    let chown_opt = chown.as_deref().and_then(parse_chown);
    let base_action = |input: usize, src: String| CopyAction {
        chown: chown_opt.clone(),
        chmod: chmod.clone(),
        dir_contents_only: false,
        exclude_patterns: excludes.clone(),
        ..CopyAction::new(input, src, dest.clone())
    };

    let mut actions = Vec::new();
    let mut message = name.to_string();
    if req.parents {
        message.push_str(" --parents");
    }
    if let Some(c) = &chown {
        message.push_str(&format!(" --chown={c}"));
    }
    if let Some(c) = &chmod {
        message.push_str(&format!(" --chmod={c}"));
    }
    for path in &paths {
        message.push_str(&format!(" {path}"));
        if is_http(path) {
            if !req.is_add {
                return Err(err(format!("source can't be a URL for COPY: {path}")));
            }
            let filename = url_filename(path);
            let op = Op::Source(SourceOp::Http {
                url: path.clone(),
                checksum: checksum.clone(),
                filename: filename.clone(),
            });
            let digest = lowerer.builder.add(op, Vec::new(), st.meta(instruction));
            let mut action = base_action(inputs.index(digest), format!("/{filename}"));
            action.unpack_archives = req.unpack == Some(true);
            actions.push(FileAction::Copy(action));
        } else if is_git(path) {
            if !req.is_add {
                return Err(err(format!("source can't be a git ref for COPY: {path}")));
            }
            let (remote, fragment) = path.split_once('#').unwrap_or((path, ""));
            let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
            let op = Op::Source(SourceOp::Git {
                remote: remote.to_string(),
                reference: reference.to_string(),
                keep_git_dir: req.keep_git_dir,
                checksum: checksum.clone().unwrap_or_default(),
            });
            let digest = lowerer.builder.add(op, Vec::new(), st.meta(instruction));
            let mut action = base_action(inputs.index(digest), join_path("/", subdir));
            action.dir_contents_only = true;
            actions.push(FileAction::Copy(action));
        } else {
            let (src, include_patterns) = if req.parents {
                match path.split_once("/./") {
                    Some((parent, pattern)) => (parent.to_string(), vec![relative(pattern)]),
                    None => ("/".to_string(), vec![relative(path)]),
                }
            } else {
                (path.clone(), Vec::new())
            };
            let source = local_source.expect("set whenever a local path is copied");
            let mut action = base_action(inputs.index(source), join_path("/", &src));
            action.follow_symlinks = true;
            action.dir_contents_only = true;
            action.allow_wildcard = true;
            action.allow_empty_wildcard = true;
            action.unpack_archives = req.is_add && req.unpack.unwrap_or(true);
            action.parents = req.parents;
            action.include_patterns = include_patterns;
            actions.push(FileAction::Copy(action));
        }
    }
    for content in &req.files.contents {
        message.push_str(&format!(" <<{}", content.path));
        let data = if content.expand {
            let mut lexer = Lexer::new('\\');
            lexer.skip_process_quotes = true;
            lexer
                .process_word(&content.data, &st.env)
                .map_err(|e| Error::at(e.message, loc))?
        } else {
            content.data.clone()
        };
        let file = join_path("/", &content.path);
        let digest = inline_document(lowerer, st, instruction, &file, 0o644, data);
        actions.push(FileAction::Copy(base_action(inputs.index(digest), file)));
    }
    message.push_str(&format!(" {raw_dest}"));

    let meta = st.meta(instruction);
    if req.link && chmod.is_none() {
        let layer = add_file_op(lowerer, None, inputs, actions, meta.clone());
        st.state = Some(match st.state {
            None => layer,
            Some(below) => {
                let op = Op::Merge(MergeOp { inputs: vec![0, 1] });
                let mut merge_meta = meta;
                merge_meta.description = merge_meta.description.replacen("] ", "] LINK ", 1);
                lowerer.builder.add(op, vec![below, layer], merge_meta)
            }
        });
    } else {
        st.state = Some(add_file_op(lowerer, st.state, inputs, actions, meta));
    }
    super::history::commit(&mut st.image, message, true, true);
    Ok(())
}

/// Adds a file op over `base` (or scratch) and returns its digest.
fn add_file_op(
    lowerer: &mut Lowerer<'_>,
    base: Option<Digest>,
    mut inputs: Inputs,
    actions: Vec<FileAction>,
    meta: VertexMeta,
) -> Digest {
    let base = base.map(|d| inputs.index(d));
    let op = Op::File(FileOp { base, actions });
    lowerer.builder.add(op, inputs.into_digests(), meta)
}

/// An empty filesystem vertex, for copying from a stage that has no files.
fn empty_filesystem(lowerer: &mut Lowerer<'_>) -> Digest {
    let op = Op::File(FileOp {
        base: None,
        actions: Vec::new(),
    });
    let meta = VertexMeta {
        description: "[internal] empty filesystem".into(),
        ..VertexMeta::default()
    };
    lowerer.builder.add(op, Vec::new(), meta)
}

/// The absolute destination, keeping a trailing `/` (or `/.`) as "into this directory".
fn destination(workdir: &str, dest: &str) -> String {
    let path = join_path(workdir, dest);
    let into_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
    if into_dir && path != "/" {
        format!("{path}/")
    } else {
        path
    }
}

/// A `--parents` pattern relative to its pivot.
fn relative(pattern: &str) -> String {
    clean_path(pattern).trim_start_matches('/').to_string()
}

fn is_http(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// Git URLs that ADD clones: `git@host:repo`, `git://`, `ssh://`, or an HTTP(S) URL whose
/// path ends in `.git`.
fn is_git(src: &str) -> bool {
    let without_fragment = src.split('#').next().unwrap_or(src);
    src.starts_with("git@")
        || src.starts_with("git://")
        || src.starts_with("ssh://")
        || (is_http(src) && without_fragment.trim_end_matches('/').ends_with(".git"))
}

/// The file name a URL download is stored under: the last path segment, else `__unnamed__`.
fn url_filename(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split_once('/')
        .map_or("", |(_, p)| p);
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." && base != ".." => base.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// `--chmod`: an octal mode up to 07777, or a symbolic mode like `u+x,go=r`.
fn check_chmod(mode: &str) -> Result<(), String> {
    if mode.bytes().all(|b| b.is_ascii_digit()) {
        if u32::from_str_radix(mode, 8).is_ok_and(|m| m <= 0o7777) {
            return Ok(());
        }
    } else if mode.split(',').all(is_symbolic_clause) {
        return Ok(());
    }
    Err(format!(
        "invalid chmod parameter: '{mode}'. it should be octal string and between 0 and 07777"
    ))
}

/// One clause of a symbolic mode: `[ugoa]*([-+=][rwxXst]*)+`.
fn is_symbolic_clause(clause: &str) -> bool {
    let rest = clause.trim_start_matches(['u', 'g', 'o', 'a']);
    !rest.is_empty()
        && rest.starts_with(['+', '-', '='])
        && rest.chars().all(|c| "+-=rwxXst".contains(c))
}

/// A git source's `--checksum` is its commit, or a prefix of it: hex digits.
fn check_commit(sum: &str) -> std::result::Result<(), String> {
    if sum.bytes().all(|b| b.is_ascii_hexdigit()) && (1..=64).contains(&sum.len()) {
        Ok(())
    } else {
        Err(format!(
            "invalid checksum {sum:?} for a git source (expected a commit ID)"
        ))
    }
}

/// `--checksum` must be a digest: `sha256:` and 64 hex digits (or sha384/sha512).
fn check_digest(sum: &str) -> Result<(), String> {
    let valid = match sum.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64,
        Some(("sha384", hex)) => hex.len() == 96,
        Some(("sha512", hex)) => hex.len() == 128,
        _ => false,
    } && sum.split_once(':').is_some_and(|(_, h)| {
        h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid checksum digest format: {sum} (expected sha256:<64 hex digits>)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(destination("/app", "."), "/app/");
        assert_eq!(destination("/app", "x/"), "/app/x/");
        assert_eq!(destination("/app", "x"), "/app/x");
        assert_eq!(destination("/", "/abs/../y/."), "/y/");
        assert_eq!(destination("/", "/"), "/");
    }

    #[test]
    fn url_file_names() {
        assert_eq!(url_filename("https://x.org/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(url_filename("https://x.org/"), "__unnamed__");
        assert_eq!(url_filename("https://x.org"), "__unnamed__");
        assert!(is_git("https://github.com/a/b.git#main:sub"));
        assert!(is_git("git@github.com:a/b.git"));
        assert!(!is_git("https://x.org/file"));
    }

    #[test]
    fn chmod_values() {
        assert!(check_chmod("755").is_ok());
        assert!(check_chmod("7777").is_ok());
        assert!(check_chmod("u+x,go=r").is_ok());
        assert_eq!(
            check_chmod("17777").unwrap_err(),
            "invalid chmod parameter: '17777'. it should be octal string and between 0 and 07777"
        );
        assert!(check_chmod("789").is_err());
        assert!(check_chmod("rwx").is_err());
    }
}
