//! buildx's other forms of the build context: `-` (standard input holding a Dockerfile, or
//! a tar archive, maybe compressed, that is the context), a tarball URL and a git URL
//! (`URL#REF:SUBDIR`), locally and on a remote builder. Fetched contexts live in a private
//! temporary directory that is gone after the build.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kiln_tests::{busybox_archives, kiln, output_with_stdin, run, serve_http, wait_until};

/// A Dockerfile that copies the whole context to `/ctx`.
const COPY_ALL: &str = "FROM scratch\nCOPY . /ctx/\n";

/// A state directory, a temporary directory for kiln's own (`TMPDIR`, also the current
/// directory of the builds) and an output directory for the builds of one test.
struct Builds {
    root: tempfile::TempDir,
    tmp: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Builds {
    fn new() -> Self {
        Builds {
            root: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            out: tempfile::tempdir().unwrap(),
        }
    }

    /// `kiln build` of `context` with `extra` arguments and `stdin`, the result written to
    /// a fresh output directory; afterwards kiln has left nothing in `TMPDIR`.
    fn build(&self, extra: &[&str], context: &str, stdin: &[u8]) -> Output {
        let _ = fs::remove_dir_all(self.out.path());
        let out = output_with_stdin(
            kiln()
                .arg("--root")
                .arg(self.root.path())
                .args(["build", "--progress", "plain", "-o"])
                .arg(format!("type=local,dest={}", self.out.path().display()))
                .args(extra)
                .arg(context)
                .env("TMPDIR", self.tmp.path())
                .current_dir(self.tmp.path()),
            stdin,
        );
        let left: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with("kiln-context-"))
            .collect();
        assert!(left.is_empty(), "kiln left {left:?} in TMPDIR");
        out
    }

    /// [`Builds::build`] that must succeed; returns `path` of the result.
    fn built(&self, extra: &[&str], context: &str, stdin: &[u8], path: &str) -> String {
        let out = self.build(extra, context, stdin);
        assert!(
            out.status.success(),
            "kiln build {extra:?} {context} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read_to_string(self.out.path().join(path))
            .unwrap_or_else(|e| panic!("{path} in the result: {e}"))
    }

    /// [`Builds::build`] that must fail; returns its standard error.
    fn refused(&self, extra: &[&str], context: &str, stdin: &[u8]) -> String {
        let out = self.build(extra, context, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "kiln build {extra:?} {context} succeeded"
        );
        stderr
    }
}

/// A tar archive of `files` (path, content).
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// `data` through `tool -c` (gzip, bzip2, xz, zstd).
fn compressed(tool: &str, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new(tool)
        .args(["-c", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{tool} failed");
    out.stdout
}

/// The context archive most tests use: `COPY_ALL` at the root, another Dockerfile and a
/// file below.
fn context_tar() -> Vec<u8> {
    tar_of(&[
        ("Dockerfile", COPY_ALL),
        ("hello.txt", "hello\n"),
        (
            "sub/alt.Dockerfile",
            "FROM scratch\nCOPY sub/data.txt /alt\n",
        ),
        ("sub/data.txt", "data\n"),
    ])
}

#[test]
fn stdin_dockerfile_builds_without_a_context() {
    let archives = busybox_archives();
    let builds = Builds::new();
    run(
        kiln()
            .arg("--root")
            .arg(builds.root.path())
            .args(["load", "-i"])
            .arg(&archives.oci),
        true,
    );
    let dockerfile = b"FROM busybox:1\nRUN echo from-stdin > /made\n";
    assert_eq!(builds.built(&[], "-", dockerfile, "made"), "from-stdin\n");
    // The current directory is not the context: there is none.
    fs::write(builds.tmp.path().join("present.txt"), "here\n").unwrap();
    let out = builds.build(&[], "-", b"FROM scratch\nCOPY present.txt /\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not found"),
        "{stderr}"
    );
    // Standard input cannot be both; a Dockerfile there and -f is ambiguous.
    let both = builds.refused(&["-f", "-"], "-", dockerfile);
    assert!(
        both.contains("can't use stdin for both build context and dockerfile"),
        "{both}"
    );
    let ambiguous = builds.refused(&["-f", "Dockerfile"], "-", dockerfile);
    assert!(
        ambiguous.contains("ambiguous Dockerfile source"),
        "{ambiguous}"
    );
}

#[test]
fn stdin_tar_is_the_context_plain_or_compressed() {
    let builds = Builds::new();
    let plain = context_tar();
    assert_eq!(builds.built(&[], "-", &plain, "ctx/hello.txt"), "hello\n");
    for tool in ["gzip", "bzip2", "xz", "zstd"] {
        let archive = compressed(tool, &plain);
        assert_eq!(
            builds.built(&[], "-", &archive, "ctx/sub/data.txt"),
            "data\n",
            "{tool}"
        );
    }
    // -f names a Dockerfile inside the archive.
    let alt = builds.built(&["-f", "sub/alt.Dockerfile"], "-", &plain, "alt");
    assert_eq!(alt, "data\n");
    let missing = builds.refused(&["-f", "nope.Dockerfile"], "-", &plain);
    assert!(missing.contains("nope.Dockerfile"), "{missing}");
}

#[test]
fn hostile_stdin_tars_stay_inside_the_context() {
    let builds = Builds::new();
    let victim = tempfile::tempdir().unwrap();
    // A name with `..`, written raw (the tar crate refuses to make one): refused.
    let mut dotdot = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_old();
    let name = format!("../../../../../../../..{}/escaped", victim.path().display());
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    dotdot.append(&header, &b"bad"[..]).unwrap();
    let stderr = builds.refused(&[], "-", &dotdot.into_inner().unwrap());
    assert!(
        stderr.contains("cannot extract the archive from stdin") && stderr.contains(".."),
        "{stderr}"
    );
    assert!(!victim.path().join("escaped").exists());
    // A symlink to an absolute directory, then a file through it: the link is followed
    // as inside the context (as a chroot would), never out of it.
    let mut through = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    through
        .append_link(&mut link, "escape", victim.path())
        .unwrap();
    for (path, content) in [("escape/escaped", "bad"), ("Dockerfile", COPY_ALL)] {
        let mut file = tar::Header::new_gnu();
        file.set_size(content.len() as u64);
        file.set_mode(0o644);
        through
            .append_data(&mut file, path, content.as_bytes())
            .unwrap();
    }
    let inside = Path::new("ctx")
        .join(victim.path().strip_prefix("/").unwrap())
        .join("escaped");
    let through = through.into_inner().unwrap();
    let built = builds.built(&[], "-", &through, inside.to_str().unwrap());
    assert_eq!(built, "bad");
    assert!(!victim.path().join("escaped").exists());
}

#[test]
fn tarball_url_is_the_context() {
    let builds = Builds::new();
    let base = serve_http(vec![
        ("/ctx.tar.gz", compressed("gzip", &context_tar())),
        ("/ctx.tar", context_tar()),
        ("/Dockerfile", b"FROM scratch\nCOPY hello.txt /\n".to_vec()),
    ]);
    let url = format!("{base}/ctx.tar.gz");
    assert_eq!(builds.built(&[], &url, b"", "ctx/hello.txt"), "hello\n");
    let plain = format!("{base}/ctx.tar");
    let alt = builds.built(&["-f", "sub/alt.Dockerfile"], &plain, b"", "alt");
    assert_eq!(alt, "data\n");
    // The Dockerfile may come from standard input.
    let stdin = builds.built(
        &["-f", "-"],
        &url,
        b"FROM scratch\nCOPY sub /s\n",
        "s/data.txt",
    );
    assert_eq!(stdin, "data\n");
    // A URL that is not an archive is the Dockerfile, and there is no context.
    let lone = builds.refused(&[], &format!("{base}/Dockerfile"), b"");
    assert!(
        lone.contains("not found") && lone.contains("hello.txt"),
        "{lone}"
    );
    let missing = format!("{base}/missing.tar.gz");
    let stderr = builds.refused(&[], &missing, b"");
    assert!(
        stderr.contains(&missing) && stderr.contains("404"),
        "{stderr}"
    );
}

/// `git daemon` serving the repositories below a directory on a loopback port; killed on
/// drop.
struct GitDaemon {
    child: Child,
    base: String,
}

impl GitDaemon {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // git-daemon itself, not `git daemon` (whose child it would be, left running by a
        // kill).
        let exec_path = git(dir, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .arg("--reuseaddr")
            .arg(format!("--base-path={}", dir.display()))
            .arg("--export-all")
            .arg(format!("--port={port}"))
            .arg("--listen=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git-daemon (scripts/test installs git)");
        wait_until(
            Duration::from_secs(20),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || "git daemon did not start".into(),
        );
        GitDaemon {
            child,
            base: format!("git://127.0.0.1:{port}"),
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `git args` in `repo`, as a committer of its own; returns its output.
fn git(repo: &Path, args: &[&str]) -> String {
    let out = run(
        Command::new("git")
            .current_dir(repo)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "kiln")
            .env("GIT_AUTHOR_EMAIL", "kiln@example.com")
            .env("GIT_COMMITTER_NAME", "kiln")
            .env("GIT_COMMITTER_EMAIL", "kiln@example.com")
            .args(args),
        true,
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Writes `files` into `repo` and commits them; returns the commit's ID.
fn commit(repo: &Path, files: &[(&str, &str)]) -> String {
    for (path, content) in files {
        let path = repo.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "change"]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A repository `repo` under a fresh directory: on `main`, version one (tagged `v1`) then
/// two; on `other`, version other. Each has a `sub` directory with its own Dockerfile.
fn repository() -> (tempfile::TempDir, String) {
    let served = tempfile::tempdir().unwrap();
    let repo = served.path().join("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let first = commit(
        &repo,
        &[
            ("Dockerfile", COPY_ALL),
            ("version.txt", "one\n"),
            ("sub/Dockerfile", COPY_ALL),
            ("sub/inner.txt", "inner\n"),
        ],
    );
    git(&repo, &["tag", "-a", "v1", "-m", "one"]);
    git(&repo, &["checkout", "-q", "-b", "other"]);
    commit(&repo, &[("version.txt", "other\n")]);
    git(&repo, &["checkout", "-q", "main"]);
    commit(&repo, &[("version.txt", "two\n")]);
    (served, first)
}

#[test]
fn git_url_is_the_context() {
    let builds = Builds::new();
    let (served, first) = repository();
    let daemon = GitDaemon::start(served.path());
    let url = format!("{}/repo", daemon.base);
    let version =
        |fragment: &str| builds.built(&[], &format!("{url}{fragment}"), b"", "ctx/version.txt");
    assert_eq!(version(""), "two\n");
    assert!(
        !builds.out.path().join("ctx/.git").exists(),
        ".git is not part of the context"
    );
    assert_eq!(version("#main"), "two\n");
    assert_eq!(version("#other"), "other\n");
    assert_eq!(version("#v1"), "one\n");
    assert_eq!(version(&format!("#{first}")), "one\n");
    assert_eq!(version(&format!("#{}", &first[..10])), "one\n");
    // A subdirectory is the context (and has its own Dockerfile).
    let inner = builds.built(&[], &format!("{url}#v1:sub"), b"", "ctx/inner.txt");
    assert_eq!(inner, "inner\n");
    assert!(!builds.out.path().join("ctx/version.txt").exists());
    // -f is inside the repository.
    let alt = builds.built(&["-f", "sub/Dockerfile"], &url, b"", "ctx/version.txt");
    assert_eq!(alt, "two\n");
    // Errors name the URL and say what git said.
    let stderr = builds.refused(&[], &format!("{url}#no-such-ref"), b"");
    assert!(
        stderr.contains(&url) && stderr.contains("no-such-ref"),
        "{stderr}"
    );
    let stderr = builds.refused(&[], &format!("{}/absent", daemon.base), b"");
    assert!(
        stderr.contains(&format!("{}/absent", daemon.base)) && stderr.contains("fatal"),
        "{stderr}"
    );
    let stderr = builds.refused(&[], &format!("{url}#main:nowhere"), b"");
    assert!(stderr.contains("nowhere"), "{stderr}");
    // A reference git would take for an option is refused.
    let stderr = builds.refused(&[], &format!("{url}#--upload-pack=false"), b"");
    assert!(stderr.contains("invalid git reference"), "{stderr}");
}

/// A `kiln serve` on a unix socket; stopped on drop.
struct Server {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn remote_builds_get_the_materialised_context() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kiln.sock");
    let address = format!("unix://{}", socket.display());
    let child = kiln()
        .arg("--root")
        .arg(dir.path().join("root"))
        .args(["serve", "--addr", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        address,
        _dir: dir,
    };
    wait_until(
        Duration::from_secs(20),
        || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        || "kiln serve did not start".into(),
    );
    let builds = Builds::new();
    let remote = ["--builder", server.address.as_str()];
    let tar = compressed("xz", &context_tar());
    assert_eq!(builds.built(&remote, "-", &tar, "ctx/hello.txt"), "hello\n");
    let (served, first) = repository();
    let daemon = GitDaemon::start(served.path());
    let url = format!("{}/repo#{first}:sub", daemon.base);
    assert_eq!(builds.built(&remote, &url, b"", "ctx/inner.txt"), "inner\n");
    // A Dockerfile on standard input, with no context.
    let base = serve_http(vec![("/made", b"downloaded\n".to_vec())]);
    let dockerfile = format!("FROM scratch\nADD {base}/made /made\n");
    let made = builds.built(&remote, "-", dockerfile.as_bytes(), "made");
    assert_eq!(made, "downloaded\n");
}

/// `ADD <git URL>` checks the repository out at the fragment's reference (and
/// subdirectory), without `.git` unless `--keep-git-dir=true`; a branch that moves is
/// another source.
#[test]
fn add_checks_out_git_repositories() {
    let builds = Builds::new();
    let (served, first) = repository();
    let daemon = GitDaemon::start(served.path());
    let url = format!("{}/repo", daemon.base);
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM scratch\nADD --checksum={} {url}#v1 /tagged\nADD {url}#main:sub /sub\n\
             ADD --keep-git-dir=true {url}#other /with-git\nADD {url} /main\n",
            &first[..12]
        ),
    )
    .unwrap();
    let context_arg = context.path().to_str().unwrap();
    let out = builds.build(&[], context_arg, b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |path: &str| fs::read_to_string(builds.out.path().join(path)).unwrap();
    assert_eq!(read("tagged/version.txt"), "one\n");
    assert!(!builds.out.path().join("tagged/.git").exists());
    assert_eq!(read("sub/inner.txt"), "inner\n");
    assert_eq!(read("with-git/version.txt"), "other\n");
    assert!(builds.out.path().join("with-git/.git").is_dir());
    assert_eq!(read("main/version.txt"), "two\n");

    // A new commit on main: that ADD takes it; the tagged one stays cached.
    commit(&served.path().join("repo"), &[("version.txt", "three\n")]);
    let out = builds.build(&[], context_arg, b"");
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{progress}");
    assert_eq!(read("main/version.txt"), "three\n");
    assert_eq!(read("tagged/version.txt"), "one\n");

    // --checksum is the commit the ref must check out.
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM scratch\nADD --checksum=0123abcd {url}#v1 /tagged\n"),
    )
    .unwrap();
    let out = builds.build(&[], context_arg, b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("expected checksum to match 0123abcd, got {first}")),
        "{stderr}"
    );
}
