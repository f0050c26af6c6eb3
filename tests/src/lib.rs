//! Helpers shared by kiln's integration tests: locating the built `kiln` binary and the
//! conformance data, and running commands with clear failure messages.

pub mod daemon;
pub mod images;
pub mod oci_schema;
pub mod registry;
pub mod ssh;
pub mod tls;

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

/// Polls `ready` every 20 ms until it holds; panics with `what()` (say, a server's log)
/// after `limit`.
pub fn wait_until(
    limit: std::time::Duration,
    mut ready: impl FnMut() -> bool,
    what: impl Fn() -> String,
) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `cmd` with `stdin` written to its standard input (a failing command may not read
/// it all) and returns its output.
pub fn output_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let _ = child.stdin.take().expect("piped stdin").write_all(stdin);
    child.wait_with_output().expect("wait")
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

/// Fails with what to install when a tool `scripts/make-busybox-image` needs is missing.
fn require_image_tools() {
    for tool in ["umoci", "skopeo", "busybox"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: scripts/test installs it (apt-get install umoci skopeo busybox-static)"
        );
    }
}

/// Builds [`BusyboxArchives`] in a fresh temporary directory.
pub fn busybox_archives() -> BusyboxArchives {
    require_image_tools();
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

/// An arm64 `busybox` binary for the arm64 half of the two-platform base image:
/// `KILN_TEST_ARM64_BUSYBOX` when set, else `target/fixtures/busybox-arm64` in the
/// repository, where `scripts/test` puts Debian's `busybox-static:arm64`.
pub fn arm64_busybox() -> PathBuf {
    let path = std::env::var_os("KILN_TEST_ARM64_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/fixtures/busybox-arm64"));
    assert!(
        path.is_file(),
        "{} is missing: scripts/test downloads it (Debian's busybox-static:arm64)",
        path.display()
    );
    path
}

/// Pushes a two-platform busybox image (an image index of linux/amd64 and linux/arm64,
/// each with its own architecture's busybox) to the registry at `host` (`127.0.0.1:PORT`,
/// plain HTTP) as `name` (`repository:tag`). `scripts/make-busybox-image` builds it with
/// `umoci` and `skopeo copy --all` pushes it, so kiln wrote none of it.
pub fn push_multi_platform_busybox(host: &str, name: &str) {
    require_image_tools();
    let dir = tempfile::tempdir().expect("temp dir");
    run(
        Command::new(repo_root().join("scripts/make-busybox-image"))
            .arg(dir.path())
            .env("ARM64_BUSYBOX", arm64_busybox()),
        true,
    );
    // The script tags the index with the tag of its default name, `busybox:1`.
    run(
        Command::new("skopeo")
            .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", dir.path().join("multi").display()))
            .arg(format!("docker://{host}/{name}")),
        true,
    );
}

/// Extracts the tar `archive` into the new directory `dest` with the system `tar`.
pub fn untar(archive: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("create the directory");
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dest),
        true,
    );
}

/// The `index.json` of the OCI (or `docker save`) archive `archive`, read by the system `tar`.
pub fn archive_index(archive: &Path) -> serde_json::Value {
    let out = run(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("index.json"),
        true,
    );
    serde_json::from_slice(&out.stdout).expect("index.json is JSON")
}

/// This machine's architecture in OCI's words (`amd64`, `arm64`).
pub fn host_arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// A fresh state directory with the busybox test image (`busybox:1`) loaded.
pub fn state_with_busybox() -> tempfile::TempDir {
    let archives = busybox_archives();
    let root = tempfile::tempdir().expect("temp dir");
    load_into(root.path(), &archives.oci);
    root
}

/// `kiln --root ROOT load -i ARCHIVE`, which must succeed.
pub fn load_into(root: &Path, archive: &Path) {
    run(
        kiln()
            .arg("--root")
            .arg(root)
            .args(["load", "-i"])
            .arg(archive),
        true,
    );
}

/// A request as [`serve`] hands it to its handler.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The body ([`serve_reading_bodies`] reads it; [`serve`] leaves it empty).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response: status line text (`200 OK`), extra headers (a `Content-Length` among them
/// replaces the body's own), body.
pub type Response = (&'static str, Vec<(String, String)>, Vec<u8>);

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers every request with `handler`; it
/// lives until the test process exits. Returns the base URL (`http://127.0.0.1:PORT`).
pub fn serve(handler: impl Fn(&Request) -> Response + Send + 'static) -> String {
    serve_requests(false, handler)
}

/// [`serve`] that reads each request's body (its `Content-Length` bytes) into
/// [`Request::body`] before calling `handler`.
pub fn serve_reading_bodies(handler: impl Fn(&Request) -> Response + Send + 'static) -> String {
    serve_requests(true, handler)
}

/// [`serve`], reading the bodies when `read_bodies` says so.
fn serve_requests(
    read_bodies: bool,
    handler: impl Fn(&Request) -> Response + Send + 'static,
) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some((name, value)) = line.trim_end().split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                }
                line.clear();
            }
            let mut body = Vec::new();
            if read_bodies {
                let length = headers
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .and_then(|(_, value)| value.parse::<usize>().ok())
                    .unwrap_or(0);
                body.resize(length, 0);
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
            }
            let mut parts = request_line.split(' ');
            let request = Request {
                method: parts.next().unwrap_or_default().to_string(),
                target: parts.next().unwrap_or_default().to_string(),
                headers,
                body,
            };
            let (status, extra, body) = handler(&request);
            let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            // The handler may claim another length (a body that breaks off).
            if !extra
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            for (name, value) in extra {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            if request.method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
    });
    base
}

/// [`serve`] for plain files (path → body), with a fixed `Last-Modified`; anything else
/// is 404.
pub fn serve_http(files: Vec<(&'static str, Vec<u8>)>) -> String {
    serve(
        move |request| match files.iter().find(|(p, _)| *p == request.target) {
            Some((_, body)) => (
                "200 OK",
                vec![(
                    "Last-Modified".into(),
                    "Wed, 21 Oct 2015 07:28:00 GMT".into(),
                )],
                body.clone(),
            ),
            None => ("404 Not Found", Vec::new(), b"not found".to_vec()),
        },
    )
}

/// Every path below `dir`, not following symlinks (none if `dir` cannot be read).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
            paths.push(entry.path());
        }
    }
    paths
}

/// Standard base64 (with padding), as docker stores a login and as basic auth sends it.
pub fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A docker configuration directory (for `DOCKER_CONFIG`) in which `docker login` would
/// have stored `user` and `password` for `host`.
pub fn docker_config_with_login(host: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = base64(&format!("{user}:{password}"));
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .expect("write config.json");
    dir
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_the_standard_one() {
        assert_eq!(super::base64("kiln:secret"), "a2lsbjpzZWNyZXQ=");
        assert_eq!(super::base64("kiln:pw"), "a2lsbjpwdw==");
        assert_eq!(super::base64("abc"), "YWJj");
        assert_eq!(super::base64(""), "");
    }
}
