//! Git repositories, fetched with the system `git`: the build context of a git URL and
//! `ADD <git URL>`. Never over `file://` (a Dockerfile must not read the builder's
//! disk), never asking for a password.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Checks `remote` out at `reference` (a branch, tag or commit; empty for the default
/// branch) into the empty directory `checkout` (made if missing), keeping its `.git` only with
/// `keep_git_dir`. A branch or tag name, or a full commit ID, is fetched alone and
/// shallow; anything else (an abbreviated commit) after fetching every branch and tag.
/// Errors say what git said.
pub fn checkout(
    remote: &str,
    reference: &str,
    checkout: &Path,
    keep_git_dir: bool,
) -> Result<(), String> {
    checkout_verified(remote, reference, checkout, keep_git_dir, "")
}

/// [`checkout`], failing unless the commit checked out starts with `checksum` (when it
/// is not empty), as BuildKit's `ADD --checksum` of a git source.
pub fn checkout_verified(
    remote: &str,
    reference: &str,
    checkout: &Path,
    keep_git_dir: bool,
    checksum: &str,
) -> Result<(), String> {
    let failed = |what: &str, message: String| format!("failed to {what} {remote}: {message}");
    if reference.starts_with('-') {
        // git would read it as an option.
        return Err(format!("invalid git reference {reference:?} in {remote}"));
    }
    let in_checkout = |args: &[&str]| git(checkout, args);
    fs::create_dir_all(checkout)
        .map_err(|e| format!("cannot create {}: {e}", checkout.display()))?;
    in_checkout(&["init", "-q"])
        .and_then(|_| in_checkout(&["remote", "add", "origin", remote]))
        .map_err(|message| failed("clone", message))?;
    let wanted = if reference.is_empty() {
        "HEAD"
    } else {
        reference
    };
    let checked_out =
        match in_checkout(&["fetch", "-q", "--depth=1", "--no-tags", "origin", wanted]) {
            Ok(_) => in_checkout(&["checkout", "-q", "--detach", "FETCH_HEAD"]),
            Err(shallow) => {
                in_checkout(&[
                    "fetch",
                    "-q",
                    "--no-tags",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ])
                .map_err(|message| failed("fetch", message))?;
                let commit = [format!("origin/{wanted}"), wanted.to_string()]
                    .into_iter()
                    .find_map(|name| {
                        in_checkout(&["rev-parse", "-q", "--verify", &format!("{name}^{{commit}}")])
                            .ok()
                    })
                    .ok_or_else(|| failed("fetch", shallow))?;
                in_checkout(&["checkout", "-q", "--detach", commit.trim()])
            }
        };
    checked_out.map_err(|message| failed("check out", message))?;
    if !checksum.is_empty() {
        let head = in_checkout(&["rev-parse", "HEAD"]).map_err(|m| failed("check out", m))?;
        let head = head.trim();
        if !head.starts_with(&checksum.to_ascii_lowercase()) {
            return Err(format!(
                "{remote}: expected checksum to match {checksum}, got {head}"
            ));
        }
    }
    if !keep_git_dir {
        fs::remove_dir_all(checkout.join(".git"))
            .map_err(|e| format!("cannot remove the .git of {remote}: {e}"))?;
    }
    Ok(())
}

/// The commit `reference` of `remote` names now (a full commit ID names itself), for
/// the cache key of `ADD <git URL>`: a branch that moved is another source.
pub fn resolve(remote: &str, reference: &str) -> Result<String, String> {
    if reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(reference.to_ascii_lowercase());
    }
    if reference.starts_with('-') {
        return Err(format!("invalid git reference {reference:?} in {remote}"));
    }
    let wanted = if reference.is_empty() {
        "HEAD"
    } else {
        reference
    };
    let listed = git(Path::new("/"), &["ls-remote", remote, wanted])
        .map_err(|message| format!("failed to resolve {wanted} of {remote}: {message}"))?;
    // An annotated tag lists itself and, with `^{}`, its commit: the commit wins.
    let mut lines: Vec<(&str, &str)> = listed
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .collect();
    lines.sort_by_key(|(_, name)| !name.ends_with("^{}"));
    match lines.first() {
        Some((commit, _)) => Ok(commit.to_string()),
        // An abbreviated commit is no ref: it is checked out (and keyed) as given.
        None => Ok(reference.to_string()),
    }
}

/// Runs the system `git` with `args` in `dir`; returns its standard output, or its own
/// message when it fails.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(["-c", "protocol.file.allow=never"])
        .current_dir(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git (is it installed?): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
