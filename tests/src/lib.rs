//! Helpers shared by kiln's integration tests: locating the built `kiln` binary and the
//! conformance data, and running commands with clear failure messages.

pub mod oci_schema;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `kiln` binary built in the same target directory as the running test.
///
/// Test executables live in `target/<profile>/deps/`; the binary is two levels up. The test
/// command (`scripts/test`) builds it before running the tests.
pub fn kiln_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("kiln");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p kiln` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A `kiln` command ready to take arguments.
pub fn kiln() -> Command {
    Command::new(kiln_bin())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `../shared/conformance/<sub>` beside the repository, where the public test data lives.
pub fn conformance_dir(sub: &str) -> PathBuf {
    let dir = repo_root().join("../shared/conformance").join(sub);
    assert!(
        dir.is_dir(),
        "conformance data {} is missing",
        dir.display()
    );
    dir
}

/// Runs `cmd` and returns its output, panicking with both streams if the exit status is not
/// what `expect_success` says.
pub fn run(cmd: &mut Command, expect_success: bool) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if out.status.success() != expect_success {
        panic!(
            "{cmd:?} exited with {} (expected {}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            if expect_success { "success" } else { "failure" },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Image archives of a minimal busybox image, made by tools kiln did not write: `umoci`
/// builds an OCI layout around Debian's `busybox-static`, `skopeo` turns it into an OCI
/// archive and a `docker save` archive. Both name the image `busybox:1`.
pub struct BusyboxArchives {
    /// `skopeo copy … oci-archive:` output.
    pub oci: PathBuf,
    /// `skopeo copy … docker-archive:` output.
    pub docker: PathBuf,
    _dir: tempfile::TempDir,
}

/// Builds [`BusyboxArchives`] in a fresh temporary directory.
pub fn busybox_archives() -> BusyboxArchives {
    for tool in ["umoci", "skopeo", "busybox"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: scripts/test installs it (apt-get install umoci skopeo busybox-static)"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    run(
        Command::new(repo_root().join("scripts/make-busybox-image")).arg(dir.path()),
        true,
    );
    BusyboxArchives {
        oci: dir.path().join("oci.tar"),
        docker: dir.path().join("docker.tar"),
        _dir: dir,
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for ADD tests: serves `files` (path → body) with
/// a fixed `Last-Modified`, 404 for anything else; it lives until the test process exits.
/// Returns the base URL (`http://127.0.0.1:PORT`).
pub fn serve_http(files: Vec<(&'static str, Vec<u8>)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split(' ').nth(1).unwrap_or("");
            let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.as_slice()),
                None => ("404 Not Found", &b"not found"[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\
                 Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    base
}
