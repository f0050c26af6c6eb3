//! The build context of `kiln build` in buildx's forms: a directory; `-`, standard input
//! holding a Dockerfile (no context) or a tar archive (the context); a tarball URL; a git
//! URL (`URL#ref:subdir`). All but the directory are materialised in a private temporary
//! directory, removed when the [`BuildContext`] is dropped.

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_worker::layer::{extract_archive, is_tar_archive};
use kiln_worker::rootfs::resolve_in_root;
use tempfile::TempDir;

use super::Failure;

/// Where a build's context and Dockerfile are on this machine.
pub struct BuildContext {
    /// The directory the build reads as `context`.
    pub dir: PathBuf,
    /// The Dockerfile (`-` when it comes from standard input with a local context).
    pub dockerfile: PathBuf,
    /// The private directory a fetched context lives in, removed on drop.
    _fetched: Option<TempDir>,
}

impl BuildContext {
    /// The context `spec` names (a directory, `-`, a tarball URL or a git URL), with the
    /// Dockerfile `-f file` names: for a directory, a path as given; for the other forms,
    /// a relative path is inside the context and an absolute one on this machine, as buildx.
    pub fn resolve(spec: &Path, file: Option<&Path>) -> Result<Self, Failure> {
        let text = spec.to_string_lossy();
        if spec == Path::new("-") {
            if file == Some(Path::new("-")) {
                return Err(Failure::msg(
                    "invalid argument: can't use stdin for both build context and dockerfile",
                ));
            }
            let fetched = private_dir()?;
            let received = fetched.path().join("stdin");
            File::create(&received)
                .and_then(|mut out| io::copy(&mut io::stdin().lock(), &mut out))
                .map_err(|e| unable(format!("cannot read the context from stdin: {e}")))?;
            return Self::unpack(fetched, &received, file, "stdin");
        }
        match fs::metadata(spec) {
            Ok(meta) if meta.is_dir() => {
                return Ok(BuildContext {
                    dir: spec.to_path_buf(),
                    dockerfile: file.map_or_else(|| spec.join("Dockerfile"), Path::to_path_buf),
                    _fetched: None,
                });
            }
            Ok(_) => return Err(unable(format!("{} is not a directory", spec.display()))),
            Err(_) => {}
        }
        if let Some(git) = GitUrl::parse(&text) {
            let fetched = private_dir()?;
            let dir = git.clone_into(&fetched.path().join("context"))?;
            let dockerfile = dockerfile_in(&dir, fetched.path(), file)?;
            return Ok(BuildContext {
                dir,
                dockerfile,
                _fetched: Some(fetched),
            });
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            let fetched = private_dir()?;
            let download = kiln_worker::http::download(&text, None, fetched.path())
                .map_err(|e| unable(format!("{e:#}")))?;
            let received = fetched.path().join("download");
            download
                .file
                .persist(&received)
                .map_err(|e| unable(format!("cannot keep the download of {text}: {e}")))?;
            return Self::unpack(fetched, &received, file, &text);
        }
        Err(unable(format!(
            "path {:?} not found",
            spec.display().to_string()
        )))
    }

    /// The context of `received` (a file in `fetched`, from `origin`): a tar archive, maybe
    /// compressed, is the context; anything else is the Dockerfile, with an empty context.
    fn unpack(
        fetched: TempDir,
        received: &Path,
        file: Option<&Path>,
        origin: &str,
    ) -> Result<Self, Failure> {
        let dir = fetched.path().join("context");
        fs::create_dir(&dir)
            .map_err(|e| unable(format!("cannot create {}: {e}", dir.display())))?;
        let dockerfile = if is_tar_archive(received) {
            File::open(received)
                .map_err(anyhow::Error::from)
                .and_then(|archive| extract_archive(archive, &dir))
                .map_err(|e| unable(format!("cannot extract the archive from {origin}: {e:#}")))?;
            fs::remove_file(received).ok();
            dockerfile_in(&dir, fetched.path(), file)?
        } else if file.is_some() {
            return Err(Failure::msg(format!(
                "ambiguous Dockerfile source: both {origin} and flag correspond to Dockerfiles"
            )));
        } else {
            let dockerfile = fetched.path().join("Dockerfile");
            fs::rename(received, &dockerfile)
                .map_err(|e| unable(format!("cannot keep the Dockerfile from {origin}: {e}")))?;
            dockerfile
        };
        Ok(BuildContext {
            dir,
            dockerfile,
            _fetched: Some(fetched),
        })
    }
}

/// "unable to prepare context: …", as buildx says it.
fn unable(message: String) -> Failure {
    Failure::msg(format!("unable to prepare context: {message}"))
}

/// A fresh directory only root (this user) can enter, removed on drop.
fn private_dir() -> Result<TempDir, Failure> {
    tempfile::Builder::new()
        .prefix("kiln-context-")
        .permissions(Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|e| unable(format!("cannot create a temporary directory: {e}")))
}

/// The Dockerfile of a fetched context in `dir`: `-f` relative to it (its symlinks cannot
/// lead out), absolute on this machine, `-` read from standard input into `fetched`; by
/// default `Dockerfile` at its root.
fn dockerfile_in(dir: &Path, fetched: &Path, file: Option<&Path>) -> Result<PathBuf, Failure> {
    let Some(file) = file else {
        return Ok(dir.join("Dockerfile"));
    };
    if file == Path::new("-") {
        let dockerfile = fetched.join("Dockerfile");
        File::create(&dockerfile)
            .and_then(|mut out| io::copy(&mut io::stdin().lock(), &mut out))
            .map_err(|e| Failure::msg(format!("cannot read the Dockerfile from stdin: {e}")))?;
        return Ok(dockerfile);
    }
    if file.is_absolute() {
        return Ok(file.to_path_buf());
    }
    resolve_in_root(dir, &file.to_string_lossy(), true).map_err(|e| {
        Failure::msg(format!(
            "cannot find the Dockerfile {}: {e:#}",
            file.display()
        ))
    })
}

/// A git context: `URL[#REF][:SUBDIR]`, with BuildKit's idea of which URLs are git's.
#[derive(Debug, PartialEq)]
struct GitUrl {
    /// What `git` fetches from.
    remote: String,
    /// A branch, tag or commit; the remote's default branch when empty.
    reference: String,
    /// The directory of the repository that is the context; the root when empty.
    subdir: String,
}

impl GitUrl {
    /// `spec` as a git URL: `git@…`, `git://…`, `ssh://…`, or an HTTP(S) URL whose path ends
    /// in `.git`; `None` for anything else.
    fn parse(spec: &str) -> Option<Self> {
        let (remote, fragment) = spec.split_once('#').unwrap_or((spec, ""));
        let path = remote.split('?').next().unwrap_or(remote);
        let is_git = ["git@", "git://", "ssh://"]
            .iter()
            .any(|prefix| remote.starts_with(prefix))
            || ((remote.starts_with("http://") || remote.starts_with("https://"))
                && path.ends_with(".git"));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        is_git.then(|| GitUrl {
            remote: remote.to_string(),
            reference: reference.to_string(),
            subdir: subdir.to_string(),
        })
    }

    /// Checks the repository out at the reference into the fresh directory `checkout`,
    /// without its `.git`; returns the context directory (the subdirectory, if one is
    /// named). A branch or tag name, or a full commit ID, is fetched alone and shallow;
    /// anything else (an abbreviated commit) after fetching every branch and tag.
    fn clone_into(&self, checkout: &Path) -> Result<PathBuf, Failure> {
        kiln_worker::git::checkout(&self.remote, &self.reference, checkout, false).map_err(
            |message| {
                if message.starts_with("invalid git reference") {
                    unable(message)
                } else {
                    Failure::msg(message)
                }
            },
        )?;
        let dir = resolve_in_root(checkout, &self.subdir, true)
            .map_err(|e| unable(format!("{}: {e:#}", self.remote)))?;
        if !dir.is_dir() {
            return Err(unable(format!(
                "{} has no directory {:?}",
                self.remote, self.subdir
            )));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::GitUrl;

    #[test]
    fn git_urls_are_told_from_tarball_urls() {
        let git = |remote: &str, reference: &str, subdir: &str| {
            Some(GitUrl {
                remote: remote.into(),
                reference: reference.into(),
                subdir: subdir.into(),
            })
        };
        assert_eq!(
            GitUrl::parse("https://host/repo.git#v1:docs/site"),
            git("https://host/repo.git", "v1", "docs/site")
        );
        assert_eq!(
            GitUrl::parse("git@host:org/repo.git#main"),
            git("git@host:org/repo.git", "main", "")
        );
        assert_eq!(
            GitUrl::parse("ssh://git@host/repo"),
            git("ssh://git@host/repo", "", "")
        );
        assert_eq!(
            GitUrl::parse("git://host/repo#:sub"),
            git("git://host/repo", "", "sub")
        );
        assert_eq!(GitUrl::parse("https://host/ctx.tar.gz"), None);
        assert_eq!(GitUrl::parse("./repo.git"), None);
    }
}
