//! `kiln build` takes `docker buildx build` command lines unchanged: `-q`, archives on
//! standard output (`-o -`), buildx's progress names and `BUILDKIT_PROGRESS`, the hidden
//! legacy flags, `--provenance`/`--sbom`, and `--load` without a docker daemon.

use std::fs;
use std::io::Read as _;
use std::process::{Command, Output, Stdio};

use kiln_tests::{kiln, run, state_with_busybox};

/// A state directory with `busybox:1` loaded, a build context, and an empty working
/// directory for kiln to run in (where a stray `-` directory would show).
struct Setup {
    root: tempfile::TempDir,
    context: tempfile::TempDir,
    cwd: tempfile::TempDir,
}

impl Setup {
    fn new(dockerfile: &str) -> Self {
        let root = state_with_busybox();
        let context = tempfile::tempdir().unwrap();
        fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        Setup {
            root,
            context,
            cwd: tempfile::tempdir().unwrap(),
        }
    }

    /// `kiln build EXTRA… CONTEXT`, with neither `BUILDKIT_PROGRESS` nor `DOCKER_HOST`.
    fn command(&self, extra: &[&str]) -> Command {
        let mut command = kiln();
        command
            .current_dir(self.cwd.path())
            .env_remove("BUILDKIT_PROGRESS")
            .env_remove("DOCKER_HOST")
            .arg("--root")
            .arg(self.root.path())
            .arg("build")
            .args(extra)
            .arg(self.context.path());
        command
    }

    fn build(&self, extra: &[&str], expect_success: bool) -> Output {
        run(&mut self.command(extra), expect_success)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The names of the entries of the tar `bytes`, which must hold nothing after the archive
/// but the zero blocks that end it.
fn tar_entries(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    let names = archive
        .entries()
        .expect("a tar on stdout")
        .map(|entry| {
            let entry = entry.expect("a tar entry");
            entry.path().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    let mut rest = Vec::new();
    archive.into_inner().read_to_end(&mut rest).unwrap();
    assert!(
        rest.iter().all(|&b| b == 0),
        "bytes after the archive: {:?}",
        text(&rest)
    );
    names
}

const DOCKERFILE: &str = "FROM busybox:1\nRUN echo working && echo payload > /payload\n";

#[test]
fn quiet_prints_only_the_image_id() {
    let setup = Setup::new(DOCKERFILE);
    let iidfile = setup.cwd.path().join("iid");
    let iidfile_arg = iidfile.to_str().unwrap();
    for quiet in [&["-q"][..], &["--quiet"], &["--progress=quiet"]] {
        let out = setup.build(&[quiet, &["--iidfile", iidfile_arg]].concat(), true);
        let id = fs::read_to_string(&iidfile).unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 71, "{id:?}");
        assert_eq!(text(&out.stdout), format!("{id}\n"), "{quiet:?}");
        assert_eq!(text(&out.stderr), "", "{quiet:?}");
    }
    // A failure still says why.
    fs::write(
        setup.context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN exit 3\n",
    )
    .unwrap();
    let out = setup.build(&["-q"], false);
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ERROR: failed to solve"), "{stderr}");
    assert!(stderr.contains("exit code: 3"), "{stderr}");
}

#[test]
fn archives_stream_to_stdout() {
    let setup = Setup::new(DOCKERFILE);
    // A bare `-` is the root filesystem as a tar; progress stays on stderr.
    let out = setup.build(&["-o", "-", "--progress=plain"], true);
    let entries = tar_entries(&out.stdout);
    assert!(entries.iter().any(|e| e == "payload"), "{entries:?}");
    assert!(entries.iter().any(|e| e == "bin/busybox"), "{entries:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("#2 ") && stderr.contains("working"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(setup.cwd.path()).unwrap().count(),
        0,
        "kiln wrote into its working directory"
    );

    // With -q, the image ID stays out of the archive.
    let out = setup.build(&["-q", "-o", "type=tar,dest=-"], true);
    assert!(tar_entries(&out.stdout).iter().any(|e| e == "payload"));
    assert_eq!(text(&out.stderr), "");

    let out = setup.build(&["-o", "type=oci,dest=-", "-t", "app:1"], true);
    let entries = tar_entries(&out.stdout);
    assert!(
        entries.iter().any(|e| e == "oci-layout") && entries.iter().any(|e| e == "index.json"),
        "{entries:?}"
    );
    let out = setup.build(&["-o", "type=docker,dest=-", "-t", "app:1"], true);
    assert!(
        tar_entries(&out.stdout)
            .iter()
            .any(|e| e == "manifest.json")
    );

    // Two archives cannot share standard output, and a directory cannot go there.
    let out = setup.build(&["-o", "-", "-o", "type=oci,dest=-"], false);
    assert!(
        text(&out.stderr).contains("multiple outputs configured to write to stdout"),
        "{}",
        text(&out.stderr)
    );
    let out = setup.build(&["-o", "type=local,dest=-"], false);
    assert!(
        text(&out.stderr).contains("dest cannot be stdout"),
        "{}",
        text(&out.stderr)
    );
}

/// The terminal side of a new pseudo-terminal (the other side stays open while it lives).
fn terminal() -> (std::os::fd::OwnedFd, fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&controller).unwrap();
    unlockpt(&controller).unwrap();
    let name = ptsname(&controller, Vec::new()).unwrap();
    let terminal = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .expect("open the pty");
    (controller, terminal)
}

#[test]
fn archives_are_not_written_to_a_terminal() {
    let setup = Setup::new(DOCKERFILE);
    for output in [
        "-",
        "type=tar,dest=-",
        "type=oci,dest=-",
        "type=docker,dest=-",
    ] {
        let (_controller, tty) = terminal();
        let out = setup
            .command(&["-o", output])
            .stdout(Stdio::from(tty))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{output}: {stderr}");
        assert!(
            stderr.contains("dest file is required")
                && stderr.contains("refusing to write to console"),
            "{output}: {stderr}"
        );
        // Refused before anything was built.
        assert!(!stderr.contains("#1 "), "{output}: {stderr}");
    }
}

#[test]
fn progress_none_rawjson_and_buildkit_progress() {
    let setup = Setup::new(DOCKERFILE);
    let out = setup.build(&["--progress=none", "--no-cache"], true);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "");

    let check_rawjson = |stderr: &str| {
        let statuses: Vec<serde_json::Value> = stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        let vertex = statuses
            .iter()
            .flat_map(|s| s["vertexes"].as_array().into_iter().flatten())
            .find(|v| v["name"] == "[2/2] RUN echo working && echo payload > /payload")
            .unwrap_or_else(|| panic!("no RUN vertex in {stderr}"));
        assert!(vertex["digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(vertex["started"].as_str().unwrap().ends_with('Z'));
        let log = statuses
            .iter()
            .flat_map(|s| s["logs"].as_array().into_iter().flatten())
            .next()
            .unwrap_or_else(|| panic!("no log in {stderr}"));
        assert_eq!(log["data"], kiln_tests::base64("working\n"));
        assert_eq!(log["stream"], 1);
        assert!(
            statuses
                .iter()
                .flat_map(|s| s["vertexes"].as_array().into_iter().flatten())
                .any(|v| v["completed"].is_string()),
            "{stderr}"
        );
    };
    let out = setup.build(&["--progress=rawjson", "--no-cache"], true);
    assert_eq!(text(&out.stdout), "");
    check_rawjson(&text(&out.stderr));

    // BUILDKIT_PROGRESS is the default; --progress wins over it.
    let out = run(
        setup
            .command(&["--no-cache"])
            .env("BUILDKIT_PROGRESS", "rawjson"),
        true,
    );
    check_rawjson(&text(&out.stderr));
    let out = run(
        setup
            .command(&["--progress=plain"])
            .env("BUILDKIT_PROGRESS", "rawjson"),
        true,
    );
    assert!(text(&out.stderr).contains("#2 "), "{}", text(&out.stderr));
    let out = run(
        setup.command(&[]).env("BUILDKIT_PROGRESS", "sideways"),
        false,
    );
    assert!(
        text(&out.stderr).contains("sideways"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn legacy_flags_and_attestation_flags_are_accepted() {
    let setup = Setup::new(DOCKERFILE);
    let out = setup.build(
        &[
            "--rm",
            "--rm=false",
            "--force-rm",
            "--compress=true",
            "--provenance=false",
            "--sbom=false",
            "--progress=plain",
        ],
        true,
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("WARNING"), "{stderr}");

    let out = setup.build(
        &[
            "--isolation",
            "default",
            "--squash",
            "--security-opt",
            "seccomp=unconfined",
            "--provenance=mode=max",
            "--sbom=true",
        ],
        true,
    );
    let stderr = text(&out.stderr);
    for warning in [
        "WARNING: isolation flag is deprecated with BuildKit.",
        "WARNING: security-opt flag is deprecated.",
        "WARNING: experimental flag squash is removed with BuildKit.",
    ] {
        assert!(stderr.contains(warning), "{warning}: {stderr}");
    }
    let attestations: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("attestations"))
        .collect();
    assert_eq!(
        attestations,
        [
            "WARNING: kiln does not produce attestations yet; ignoring --provenance=mode=max --sbom=true"
        ],
        "{stderr}"
    );

    // Flags buildx does not know stay unknown.
    let out = setup.build(&["--no-such-flag"], false);
    assert!(text(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn load_needs_a_reachable_docker_daemon() {
    let setup = Setup::new(DOCKERFILE);
    let socket = setup.cwd.path().join("docker.sock");
    let host = format!("unix://{}", socket.display());
    let out = run(
        setup
            .command(&["--load", "-t", "app:1"])
            .env("DOCKER_HOST", &host),
        false,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "no docker daemon is reachable at DOCKER_HOST={host}"
        )),
        "{stderr}"
    );
    // It fails before building.
    assert!(!stderr.contains("#1 "), "{stderr}");

    if !std::path::Path::new("/var/run/docker.sock").exists() {
        let stderr = text(&setup.build(&["--load"], false).stderr);
        assert!(
            stderr.contains("no docker daemon is reachable at unix:///var/run/docker.sock"),
            "{stderr}"
        );
    }

    let out = run(
        setup
            .command(&["--load"])
            .env("DOCKER_HOST", "tcp://127.0.0.1:2375"),
        false,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("DOCKER_HOST=tcp://127.0.0.1:2375 is not one"),
        "{stderr}"
    );
}
