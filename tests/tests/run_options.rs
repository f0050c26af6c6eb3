//! `kiln build --shm-size`, `--ulimit` and `--add-host`: what every RUN step sees, checked
//! from inside the step with busybox's `df`, `ulimit` and `cat`, under the embedded runtime
//! and under `--oci-runtime runc`; bad values fail before anything is built.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_tests::{kiln, run, state_with_busybox};

/// Which OCI runtime runs the RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Embedded,
    Runc,
}

/// A RUN step that records what it sees of `/dev/shm`, its open-file and core-size limits
/// and `/etc/hosts`.
const DOCKERFILE: &str = "\
FROM busybox:1
RUN mkdir /seen && df -k /dev/shm > /seen/shm && ulimit -Sn > /seen/nofile \\
    && ulimit -Hn > /seen/nofile-hard && { ulimit -Sc; ulimit -Hc; } > /seen/core \
    && cat /etc/hosts > /seen/hosts
";

/// What one build's step saw.
struct Seen {
    /// `/dev/shm`'s size in KiB (`df -k`'s second column).
    shm_kib: u64,
    /// Soft and hard open-file limits, as `ulimit` prints them.
    nofile: (String, String),
    /// Soft and hard core-size limits, as `ulimit` prints them (512-byte blocks).
    core: String,
    /// `/etc/hosts`.
    hosts: String,
}

impl Seen {
    fn read(dir: &Path) -> Self {
        let read = |name: &str| {
            fs::read_to_string(dir.join("seen").join(name))
                .unwrap_or_else(|e| panic!("the step wrote no /seen/{name}: {e}"))
        };
        let df = read("shm");
        let shm_kib = df
            .lines()
            .nth(1)
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|size| size.parse().ok())
            .unwrap_or_else(|| panic!("unexpected df output:\n{df}"));
        Seen {
            shm_kib,
            nofile: (
                read("nofile").trim().to_string(),
                read("nofile-hard").trim().to_string(),
            ),
            core: read("core"),
            hosts: read("hosts"),
        }
    }
}

/// A state directory with `busybox:1` loaded and a context holding [`DOCKERFILE`].
struct Setup {
    root: tempfile::TempDir,
    context: tempfile::TempDir,
    runtime: Runtime,
}

impl Setup {
    fn new(runtime: Runtime) -> Self {
        let root = state_with_busybox();
        let context = tempfile::tempdir().unwrap();
        fs::write(context.path().join("Dockerfile"), DOCKERFILE).unwrap();
        Setup {
            root,
            context,
            runtime,
        }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = kiln();
        command
            .arg("--root")
            .arg(self.root.path())
            .args(["build", "--progress", "plain"]);
        if self.runtime == Runtime::Runc {
            command.args(["--oci-runtime", "runc"]);
        }
        command.args(extra).arg(self.context.path());
        command
    }

    /// Builds with `extra` flags into a local directory and reads what the step saw.
    fn build(&self, extra: &[&str]) -> Seen {
        let out = tempfile::tempdir().unwrap();
        let dest = format!("type=local,dest={}", out.path().display());
        run(self.command(extra).args(["-o", &dest]), true);
        Seen::read(out.path())
    }
}

fn steps_see_the_builds_shm_size_ulimits_and_hosts(runtime: Runtime) {
    let setup = Setup::new(runtime);
    let defaults = setup.build(&[]);
    // Without --shm-size, /dev/shm stays the runtime's 64 MiB tmpfs (BuildKit's default too).
    assert_eq!(defaults.shm_kib, 64 * 1024);
    // Without --ulimit, steps have kiln's open-file limit, raised to its hard limit as Go
    // raises buildkitd's: not the runtime spec's 1024.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .map_or("unlimited".to_string(), |m| m.to_string());
    assert_eq!(defaults.nofile, (hard.clone(), hard));
    let default_hosts = "127.0.0.1\tlocalhost buildkitsandbox\n\
                         ::1\tlocalhost ip6-localhost ip6-loopback\n";
    assert_eq!(defaults.hosts, default_hosts);

    let flags = [
        "--shm-size",
        "128m",
        "--ulimit",
        "nofile=1234:2345",
        "--add-host",
        "db.internal:10.1.2.3",
        "--add-host",
        "v6host=fd00::1",
        "--add-host",
        "Bracketed:[fd00::2]",
    ];
    // The same Dockerfile again: the options are part of the step's cache key, so the step
    // runs again and sees them.
    let seen = setup.build(&flags);
    assert_eq!(seen.shm_kib, 128 * 1024);
    assert_eq!(seen.nofile, ("1234".to_string(), "2345".to_string()));
    assert_eq!(
        seen.hosts,
        format!("{default_hosts}10.1.2.3\tdb.internal\nfd00::1\tv6host\nfd00::2\tbracketed\n")
    );
    assert_ne!(defaults.nofile, seen.nofile);

    // Other sizes and units, the last --ulimit of a name winning, -1 as unlimited (which
    // RLIMIT_NOFILE cannot be: the kernel caps it).
    let seen = setup.build(&[
        "--shm-size",
        "1g",
        "--ulimit",
        "nofile=10:20",
        "--ulimit",
        "nofile=4096:8192",
        "--ulimit",
        "core=1048576:-1",
    ]);
    assert_eq!(seen.shm_kib, 1024 * 1024);
    assert_eq!(seen.nofile, ("4096".to_string(), "8192".to_string()));
    assert_eq!(seen.core, "2048\nunlimited\n");
    assert_eq!(seen.hosts, default_hosts);
}

#[test]
fn embedded_runtime_steps_see_the_builds_shm_size_ulimits_and_hosts() {
    steps_see_the_builds_shm_size_ulimits_and_hosts(Runtime::Embedded);
}

#[test]
fn runc_steps_see_the_builds_shm_size_ulimits_and_hosts() {
    steps_see_the_builds_shm_size_ulimits_and_hosts(Runtime::Runc);
}

#[test]
fn bad_values_fail_before_the_build() {
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    // A Dockerfile that would fail if anything ran: no image is loaded.
    fs::write(context.path().join("Dockerfile"), DOCKERFILE).unwrap();
    for (flags, expected) in [
        (["--ulimit", "nofiles=10"], "invalid ulimit type: nofiles"),
        (
            ["--ulimit", "nofile=20:10"],
            "soft limit must be less than or equal to hard limit: 20 > 10",
        ),
        (["--ulimit", "nofile=many"], "invalid ulimit value"),
        (["--add-host", "db:10.0.0.300"], "is not an IP address"),
        (["--add-host", "db"], "expected NAME=IP or NAME:IP"),
        (["--shm-size", "lots"], "invalid size"),
    ] {
        let out = run(
            kiln()
                .arg("--root")
                .arg(root.path())
                .arg("build")
                .args(flags)
                .arg(context.path()),
            false,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{flags:?}:\n{stderr}");
        assert!(
            !stderr.contains("busybox"),
            "{flags:?} got to the build:\n{stderr}"
        );
    }
}

/// `--network none` is the network of every RUN that does not choose one (a step's own
/// `--network=host` still needs `--allow network.host`), and travels to a remote builder
/// as BuildKit's `force-network-mode` attribute.
#[test]
fn the_builds_network_is_the_default_of_its_steps() {
    let root = state_with_busybox();
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN ls /sys/class/net > /nets\nRUN --network=default ls /sys/class/net > /nets-default\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .args(["build", "--network", "none", "-o"])
            .arg(format!("type=local,dest={}", out.path().display()))
            .arg(context.path()),
        true,
    );
    for file in ["nets", "nets-default"] {
        assert_eq!(
            fs::read_to_string(out.path().join(file)).unwrap(),
            "lo\n",
            "{file}"
        );
    }
    let refused = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .args(["build", "--network", "host"])
            .arg(context.path()),
        false,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("network.host"), "{stderr}");
    let attrs = kiln_frontend::lower::RunOptions {
        network: kiln_solver::NetworkMode::None,
        ..Default::default()
    }
    .to_attrs();
    assert_eq!(
        attrs,
        [("force-network-mode".to_string(), "none".to_string())]
    );
}
