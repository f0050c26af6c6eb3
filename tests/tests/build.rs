//! `kiln build` end to end: real RUN steps, the persistent cache, and outputs checked by
//! tools kiln did not write (skopeo, umoci, runc). Every test runs twice: with the embedded
//! runtime and with `--oci-runtime runc`.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_tests::oci_schema::assert_valid_layout;
use kiln_tests::{kiln, run, serve_http, state_with_busybox};

/// Which OCI runtime runs the RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Embedded,
    Runc,
}

/// Generates, for each named test function taking a [`Runtime`], one test per runtime.
macro_rules! for_each_runtime {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $test() { super::$test(super::Runtime::Embedded) })*
        }
        mod runc {
            $(#[test] fn $test() { super::$test(super::Runtime::Runc) })*
        }
    };
}

for_each_runtime!(
    builds_an_image_that_other_tools_can_run,
    the_cache_persists_and_follows_exactly_what_copy_selects,
    failures_point_at_the_cause_and_leave_the_store_usable,
    run_steps_are_sandboxed_like_docker,
    run_steps_live_under_kilns_cgroups,
    local_and_tar_outputs_hold_the_root_filesystem,
    ctrl_c_stops_a_running_step_and_cleans_up,
    a_build_killed_at_any_moment_reruns_to_a_correct_image,
    env_arg_and_heredocs_reach_the_image,
    privileged_steps_need_an_entitlement,
);

/// A state directory with `busybox:1` loaded, and a build context.
struct Setup {
    root: tempfile::TempDir,
    context: tempfile::TempDir,
    runtime: Runtime,
}

impl Setup {
    fn new(runtime: Runtime, dockerfile: &str) -> Self {
        let root = state_with_busybox();
        let context = tempfile::tempdir().unwrap();
        fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        Setup {
            root,
            context,
            runtime,
        }
    }

    fn file(&self, name: &str, content: &str) {
        let path = self.context.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// `kiln build` of the context with this setup's runtime.
    fn command(&self) -> Command {
        let mut command = kiln();
        command.arg("--root").arg(self.root.path()).arg("build");
        if self.runtime == Runtime::Runc {
            command.args(["--oci-runtime", "runc"]);
        }
        command
    }

    fn build(&self, extra: &[&str]) -> Output {
        self.command()
            .args(extra)
            .arg(self.context.path())
            .output()
            .unwrap()
    }

    /// Builds, expecting failure; returns what kiln printed.
    fn build_err(&self, extra: &[&str]) -> String {
        let out = self.build(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "build succeeded:\n{stderr}");
        stderr
    }

    fn build_ok(&self, extra: &[&str]) -> String {
        let out = self.build(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "build failed:\n{stderr}");
        stderr
    }
}

/// Whether a step printed `line` (progress lines are `#N SECONDS TEXT`).
fn printed(progress: &str, line: &str) -> bool {
    progress.lines().any(|l| {
        let mut parts = l.splitn(3, ' ');
        parts.next().is_some_and(|n| n.starts_with('#'))
            && parts.next().is_some_and(|t| t.parse::<f64>().is_ok())
            && parts.next() == Some(line)
    })
}

/// The image ID a build printed (`writing image sha256:…`).
fn image_id(progress: &str) -> &str {
    progress
        .lines()
        .find_map(|l| l.strip_prefix("writing image "))
        .unwrap_or_else(|| panic!("no image ID in:\n{progress}"))
}

/// Lines of build output that say a step came from the cache.
fn cached_steps(progress: &str) -> usize {
    progress.lines().filter(|l| l.ends_with(" CACHED")).count()
}

/// The two-stage Dockerfile most tests build (the benchmarks build it too).
const APP: &str = include_str!("../fixtures/app.Dockerfile");

fn app_setup(runtime: Runtime) -> Setup {
    let setup = Setup::new(runtime, APP);
    setup.file("src/a.txt", "alpha\n");
    setup.file("src/b.txt", "beta\n");
    setup.file("src/secret.txt", "do not ship\n");
    setup.file("config.ini", "[app]\n");
    setup.file("unrelated.md", "not copied\n");
    setup.file(".dockerignore", "src/secret.txt\n");
    setup
}

fn builds_an_image_that_other_tools_can_run(runtime: Runtime) {
    let setup = app_setup(runtime);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("app.tar");
    let progress = setup.build_ok(&[
        "-t",
        "app:1",
        "-o",
        &format!("type=oci,dest={}", archive.display()),
    ]);
    assert!(
        printed(&progress, "built"),
        "RUN output is streamed:\n{progress}"
    );

    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 6, "{inspect}");

    // Unpack with umoci and run with runc: what the image holds and how it runs.
    let layout = out.path().join("layout");
    fs::create_dir(&layout).unwrap();
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
        true,
    );
    assert_valid_layout(&layout);
    let bundle = out.path().join("bundle");
    run(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:1", layout.display()))
            .arg(&bundle),
        true,
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("app/combined")).unwrap(),
        "alpha\nbeta\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/app/config.ini")).unwrap(),
        "[app]\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("home/app/uid")).unwrap(),
        "1000\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("home/app/where")).unwrap(),
        "/home/app\n"
    );
    assert!(
        !rootfs.join("src").exists(),
        "the build stage is not in the image"
    );
    assert!(
        !rootfs.join("etc/hosts").exists(),
        "mount stubs are not in the image"
    );

    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["cat", "/app/combined"])
    );
    assert_eq!(config["process"]["user"]["uid"], 1000);
    // umoci asks for a terminal; a test has none.
    config["process"]["terminal"] = serde_json::json!(false);
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let runc_root = out.path().join("runc");
    let ran = Command::new("runc")
        .arg("--root")
        .arg(&runc_root)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(format!("kiln-test-{}", std::process::id()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "alpha\nbeta\n",
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
}

fn the_cache_persists_and_follows_exactly_what_copy_selects(runtime: Runtime) {
    let setup = app_setup(runtime);
    setup.build_ok(&["-t", "app:1"]);
    let second = setup.build_ok(&["-t", "app:1"]);
    assert_eq!(
        cached_steps(&second),
        9,
        "everything but the context is cached:\n{second}"
    );
    assert!(!printed(&second, "built"), "no RUN ran:\n{second}");

    // Files no COPY selects: ignored ones and unrelated ones.
    setup.file("src/secret.txt", "changed\n");
    setup.file("unrelated.md", "changed\n");
    let third = setup.build_ok(&["-t", "app:1"]);
    assert_eq!(cached_steps(&third), 9, "{third}");

    // A selected file: its COPY and everything after it in that stage rerun.
    setup.file("src/b.txt", "BETA\n");
    let fourth = setup.build_ok(&["-t", "app:1"]);
    assert!(printed(&fourth, "built"), "{fourth}");
    assert!(cached_steps(&fourth) < 9, "{fourth}");

    let no_cache = setup.build_ok(&["--no-cache", "-t", "app:1"]);
    // Only the base image itself may be reused.
    assert!(cached_steps(&no_cache) <= 1, "{no_cache}");
    assert!(printed(&no_cache, "built"), "{no_cache}");
}

fn failures_point_at_the_cause_and_leave_the_store_usable(runtime: Runtime) {
    let setup = Setup::new(
        runtime,
        "FROM busybox:1\nRUN echo about to fail\nRUN echo last words && exit 3\n",
    );
    let out = setup.build(&[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(" > [3/3] RUN echo last words && exit 3:\nlast words\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(">>> RUN echo last words && exit 3"),
        "{stderr}"
    );
    assert!(stderr.contains("ERROR: failed to solve: process \"/bin/sh -c echo last words && exit 3\" did not complete successfully: exit code: 3"), "{stderr}");

    setup.file("Dockerfile", "FROM busybox:1\nCOPY missing.txt /\n");
    let stderr = setup.build_err(&[]);
    assert!(stderr.contains("\"/missing.txt\": not found"), "{stderr}");
    assert!(stderr.contains(">>> COPY missing.txt /"), "{stderr}");

    setup.file("Dockerfile", "FROM busybox:1\nRUN echo fine > /ok\n");
    setup.build_ok(&["-t", "ok:1"]);
    assert_no_leftovers(setup.root.path());
}

/// No mounts, scratch directories or containers remain after builds.
fn assert_no_leftovers(root: &Path) {
    for runtime_state in ["runc", "containers"] {
        if let Ok(entries) = fs::read_dir(root.join(runtime_state)) {
            let left: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
            assert!(left.is_empty(), "containers left behind: {left:?}");
        }
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(root.to_str().unwrap()),
        "mounts left behind:\n{mounts}"
    );
    let work: Vec<PathBuf> = fs::read_dir(root.join("snapshots/work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(work.is_empty(), "scratch left behind: {work:?}");
}

fn run_steps_are_sandboxed_like_docker(runtime: Runtime) {
    let marker = tempfile::NamedTempFile::new().unwrap();
    // A host block device that the host can open: a step may create a node for it but
    // must not open it (the devices cgroup denies all but Docker's few devices).
    let disk = openable_host_block_device();
    let (major, minor) = (rustix::fs::major(disk), rustix::fs::minor(disk));
    let setup = Setup::new(
        runtime,
        &format!(
            "FROM busybox:1\n\
             RUN cat /proc/sys/kernel/hostname /etc/hosts && \\\n\
             \x20   while read -r key value; do [ \"$key\" = CapEff: ] && echo \"caps $value\"; done < /proc/self/status; \\\n\
             \x20   if [ -e {host} ]; then echo host file visible; else echo host file hidden; fi\n\
             RUN --network=none while read -r line; do echo \"net $line\"; done < /proc/net/dev\n\
             RUN mknod /disk b {major} {minor} && echo node made; \\\n\
             \x20   if head -c 512 /disk >/dev/null; then echo disk readable; else echo disk refused; fi; \\\n\
             \x20   echo x > /dev/null && head -c 1 /dev/urandom >/dev/null && echo null and urandom usable\n\
             RUN unshare -Urm true && echo user namespace made || echo user namespace refused; \\\n\
             \x20   unshare -n true || echo network namespace refused\n\
             USER 1000\n\
             RUN while read -r key value; do case $key in Cap*:) echo \"user $key $value\";; esac; done < /proc/self/status\n",
            host = marker.path().display()
        ),
    );
    let progress = setup.build_ok(&["--progress", "plain"]);
    for line in [
        "buildkitsandbox",
        "127.0.0.1\tlocalhost buildkitsandbox",
        // Docker's 14 default capabilities and no more.
        "caps 00000000a80425fb",
        "host file hidden",
        "node made",
        "disk refused",
        "null and urandom usable",
        // Docker's seccomp profile: no new namespaces without CAP_SYS_ADMIN.
        "user namespace refused",
        "network namespace refused",
        // Another user than root has no capabilities but the bounding set.
        "user CapInh: 0000000000000000",
        "user CapPrm: 0000000000000000",
        "user CapEff: 0000000000000000",
        "user CapBnd: 00000000a80425fb",
        "user CapAmb: 0000000000000000",
    ] {
        assert!(printed(&progress, line), "{line:?} missing:\n{progress}");
    }
    let interfaces: Vec<&str> = progress
        .lines()
        .filter_map(|l| l.split_once(" net ").map(|(_, rest)| rest))
        .filter(|rest| rest.contains(':'))
        .collect();
    assert_eq!(interfaces.len(), 1, "only loopback: {interfaces:?}");
    assert!(interfaces[0].starts_with("lo:"), "{interfaces:?}");
}

/// This process's cgroup v1 hierarchies: controllers (`cpu,cpuacct`) and path, from a
/// `/proc/PID/cgroup` text.
fn v1_cgroups(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            (!controllers.is_empty() && !controllers.starts_with("name="))
                .then(|| (controllers.to_owned(), PathBuf::from(path)))
        })
        .collect()
}

fn run_steps_live_under_kilns_cgroups(runtime: Runtime) {
    // kiln runs in a memory cgroup of its own, as under a CI job's or a unit's limit;
    // every cgroup of its step must lie below kiln's, so that such a limit binds it.
    let own = v1_cgroups(&fs::read_to_string("/proc/self/cgroup").unwrap());
    let (_, memory) = own
        .iter()
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"))
        .expect("the cgroup check needs a cgroup v1 memory hierarchy");
    let confined = memory.join(format!("kiln-test-{}-{runtime:?}", std::process::id()));
    let confined_dir = Path::new("/sys/fs/cgroup/memory").join(confined.strip_prefix("/").unwrap());
    fs::create_dir(&confined_dir).unwrap();
    let setup = Setup::new(runtime, "FROM busybox:1\nRUN cat /proc/self/cgroup\n");
    let kiln = setup.command();
    let out = Command::new("sh")
        .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
        .arg(&confined_dir)
        .arg(kiln.get_program())
        .args(kiln.get_args())
        .args(["--progress", "plain"])
        .arg(setup.context.path())
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&out.stderr);
    // Empty once kiln is gone: the step's cgroups were removed. The embedded runtime made
    // the same path in the other hierarchies on the way to its step's.
    fs::remove_dir(&confined_dir).unwrap();
    for (controllers, _) in &own {
        let made = Path::new("/sys/fs/cgroup")
            .join(controllers)
            .join(confined.strip_prefix("/").unwrap());
        if made.exists() {
            fs::remove_dir(&made).unwrap();
        }
    }
    assert!(out.status.success(), "{progress}");
    let step_lines: String = progress
        .lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2))
        .map(|l| format!("{l}\n"))
        .collect();
    let step = v1_cgroups(&step_lines);
    assert!(!step.is_empty(), "the step printed no cgroup:\n{progress}");
    for (controllers, path) in step {
        let kilns = if controllers.split(',').any(|c| c == "memory") {
            &confined
        } else {
            &own.iter().find(|(c, _)| *c == controllers).unwrap().1
        };
        assert!(
            path.starts_with(kilns) && path != *kilns,
            "{controllers}: the step's {path:?} is not below kiln's {kilns:?}"
        );
    }
}

/// The device number of a block device under `/dev` that this (root) process can open.
fn openable_host_block_device() -> u64 {
    use std::os::unix::fs::FileTypeExt as _;
    fs::read_dir("/dev")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find_map(|path| {
            let meta = fs::symlink_metadata(&path).ok()?;
            (meta.file_type().is_block_device() && fs::File::open(&path).is_ok())
                .then(|| meta.rdev())
        })
        .expect("no block device under /dev opens on this host; the device check needs one")
}

fn local_and_tar_outputs_hold_the_root_filesystem(runtime: Runtime) {
    let setup = Setup::new(
        runtime,
        "FROM busybox:1\nRUN mkdir -p /data && echo payload > /data/file && ln -s file /data/link\n",
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("rootfs");
    let tarball = out.path().join("rootfs.tar");
    setup.build_ok(&[
        "-o",
        &format!("type=local,dest={}", dir.display()),
        "-o",
        &format!("type=tar,dest={}", tarball.display()),
    ]);
    assert_eq!(
        fs::read_to_string(dir.join("data/file")).unwrap(),
        "payload\n"
    );
    assert_eq!(
        fs::read_link(dir.join("data/link")).unwrap(),
        Path::new("file")
    );
    assert!(dir.join("bin/busybox").exists());
    let listing = run(Command::new("tar").arg("-tf").arg(&tarball), true);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l == "data/file"), "{listing}");
}

/// Whether a process with the NUL-separated command line `cmdline` runs on this host.
fn running(cmdline: &[u8]) -> bool {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| fs::read(e.unwrap().path().join("cmdline")).ok())
        .any(|c| c == cmdline)
}

/// Waits until the build `child` (stderr piped) printed `started` from a step and then
/// until the process `cmdline` runs; returns its stderr and what it printed so far.
fn wait_for_step(
    child: &mut std::process::Child,
    cmdline: &[u8],
) -> (std::io::BufReader<std::process::ChildStderr>, String) {
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !printed(&seen, "started") {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "build ended early:\n{seen}"
        );
        seen.push_str(&line);
    }
    // "started" comes just before the shell starts the process.
    let started = std::time::Instant::now();
    while !running(cmdline) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{seen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (stderr, seen)
}

fn ctrl_c_stops_a_running_step_and_cleans_up(runtime: Runtime) {
    // A duration no other test uses, to find the step's process afterwards.
    let seconds = 600 + runtime as u32;
    let nap = format!("sleep\0{seconds}\0");
    let setup = Setup::new(
        runtime,
        &format!("FROM busybox:1\nRUN echo started && sleep {seconds}\n"),
    );
    // In a process group of its own, as a shell gives a command it runs.
    let mut child = std::os::unix::process::CommandExt::process_group(&mut setup.command(), 0)
        .arg(setup.context.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step is running, then interrupt kiln's whole process group, as
    // Ctrl-C in a terminal does.
    let (mut stderr, seen) = wait_for_step(&mut child, nap.as_bytes());
    let started = std::time::Instant::now();
    run(
        Command::new("kill").args(["-INT", "--", &format!("-{}", child.id())]),
        true,
    );
    while running(nap.as_bytes()) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the step's container outlived Ctrl-C by 2 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{seen}{rest}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "cancellation took {:?}",
        started.elapsed()
    );
    assert!(
        rest.contains("CANCELED") && rest.contains("build cancelled"),
        "{rest}"
    );
    assert_no_leftovers(setup.root.path());
}

/// A container that a SIGKILLed kiln left running is stopped by the next kiln command of
/// any kind, not only the next build.
#[test]
fn the_next_command_stops_what_a_killed_build_left_running() {
    // Unique to this run: what an earlier, failed run left behind cannot be mistaken for
    // this run's step.
    let seconds = 100_000 + std::process::id();
    let nap = format!("sleep\0{seconds}\0");
    let setup = Setup::new(
        Runtime::Embedded,
        &format!("FROM busybox:1\nRUN echo started && sleep {seconds}\n"),
    );
    let mut child = setup
        .command()
        .args(["--progress", "plain"])
        .arg(setup.context.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_step(&mut child, nap.as_bytes());
    let sleeping = || running(nap.as_bytes());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sleeping(), "the container should outlive a SIGKILLed kiln");
    run(
        kiln().arg("--root").arg(setup.root.path()).arg("images"),
        true,
    );
    assert!(
        !sleeping(),
        "kiln images left the killed build's container running"
    );
    assert_no_leftovers(setup.root.path());
}

#[test]
fn add_extracts_local_tar_archives_and_copy_does_not() {
    let setup = Setup::new(
        Runtime::Embedded,
        "FROM busybox:1\n\
         ADD app.tar.gz /opt/\n\
         ADD app.tar.xz /xz\n\
         ADD app.tar.bz2 app.tar.zst /more/\n\
         ADD plain.txt.gz /raw/\n\
         COPY app.tar.gz /copied/\n",
    );
    let ctx = setup.context.path();
    setup.file("pkg/hello.txt", "hello\n");
    setup.file("pkg/.wh.keep", "not a whiteout\n");
    for (name, flag) in [
        ("app.tar.gz", "-z"),
        ("app.tar.xz", "-J"),
        ("app.tar.bz2", "-j"),
        ("app.tar.zst", "--zstd"),
    ] {
        run(
            Command::new("tar")
                .arg("-C")
                .arg(ctx)
                .args(["--owner=123", "--group=456", flag, "-cf"])
                .arg(ctx.join(name))
                .arg("pkg"),
            true,
        );
    }
    setup.file("plain.txt", "just text\n");
    run(Command::new("gzip").arg(ctx.join("plain.txt")), true);

    let out = tempfile::tempdir().unwrap();
    setup.build_ok(&["-o", &format!("type=local,dest={}", out.path().display())]);
    let root = out.path();
    for dir in ["opt", "xz", "more"] {
        let hello = root.join(dir).join("pkg/hello.txt");
        assert_eq!(fs::read_to_string(&hello).unwrap(), "hello\n", "{dir}");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&fs::metadata(&hello).unwrap()),
            123,
            "owners come from the archive"
        );
        assert_eq!(
            fs::read_to_string(root.join(dir).join("pkg/.wh.keep")).unwrap(),
            "not a whiteout\n"
        );
    }
    assert!(root.join("raw/plain.txt.gz").is_file(), "not a tar: copied");
    assert!(
        root.join("copied/app.tar.gz").is_file(),
        "COPY never extracts"
    );
}

/// A hostile archive's device nodes and setuid files, and those a RUN step makes, are
/// unpacked and kept only where no other user of the host can reach them: never in the
/// host's temporary directory (`TMPDIR` points nowhere here), and under a directory of the
/// state directory that only root may enter.
#[test]
fn add_and_run_keep_hostile_files_out_of_other_users_reach() {
    let base = serve_http(vec![("/payload", b"downloaded\n".to_vec())]);
    let setup = Setup::new(
        Runtime::Embedded,
        &format!(
            "FROM busybox:1\n\
             ADD hostile.tar /opt/\n\
             ADD {base}/payload /dl/\n\
             RUN mknod /made c 1 3 && ls -l /opt/hostile/suid\n"
        ),
    );
    let ctx = setup.context.path();
    let hostile = ctx.join("hostile");
    fs::create_dir(&hostile).unwrap();
    run(
        Command::new("mknod")
            .arg(hostile.join("dev"))
            .args(["b", "7", "0"]),
        true,
    );
    fs::write(hostile.join("suid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(hostile.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    run(
        Command::new("tar")
            .arg("-C")
            .arg(ctx)
            .arg("-cf")
            .arg(ctx.join("hostile.tar"))
            .arg("hostile"),
        true,
    );
    fs::remove_dir_all(&hostile).unwrap();

    // A state directory that others may enter, as one made by hand may be.
    let root = setup.root.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let out = setup
        .command()
        .env("TMPDIR", ctx.join("no-such-dir"))
        .arg(ctx)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build failed:\n{stderr}");

    let mut hostile_files = 0;
    for entry in kiln_tests::walk(root) {
        let meta = fs::symlink_metadata(&entry).unwrap();
        use std::os::unix::fs::FileTypeExt as _;
        let kind = meta.file_type();
        let dangerous = kind.is_block_device()
            || kind.is_char_device()
            || (kind.is_file() && meta.mode() & 0o4000 != 0);
        if !dangerous {
            continue;
        }
        hostile_files += 1;
        let fenced = entry
            .ancestors()
            .skip(1)
            .take_while(|dir| dir.starts_with(root))
            .any(|dir| fs::metadata(dir).unwrap().mode() & 0o011 == 0);
        assert!(fenced, "{} is reachable by other users", entry.display());
    }
    // The setuid file of the ADD layer and the RUN layer's device node (ADD, like COPY,
    // leaves the archive's device node out).
    assert!(
        hostile_files >= 2,
        "the layers were not found under {}",
        root.display()
    );
}

/// Host networking and insecure steps need the build to grant them (`--allow`), as in
/// BuildKit; nothing runs before the refusal.
fn privileged_steps_need_an_entitlement(runtime: Runtime) {
    let setup = Setup::new(
        runtime,
        "FROM busybox:1\n\
         RUN echo first > /first\n\
         RUN --network=host echo host network\n\
         RUN --security=insecure echo insecure\n",
    );
    let refused = setup.build_err(&["--progress", "plain"]);
    assert!(
        refused.contains("ERROR: failed to solve: network.host is not allowed"),
        "{refused}"
    );
    assert!(refused.contains(">>> RUN --network=host"), "{refused}");
    let ran_first = refused
        .lines()
        .any(|l| l.starts_with('#') && l.contains("RUN echo first"));
    assert!(!ran_first, "a step ran before the refusal:\n{refused}");

    let refused = setup.build_err(&["--progress", "plain", "--allow", "network.host"]);
    assert!(
        refused.contains("ERROR: failed to solve: security.insecure is not allowed"),
        "{refused}"
    );

    let granted = setup.build_ok(&[
        "--progress",
        "plain",
        "--allow",
        "network.host,security.insecure",
    ]);
    assert!(printed(&granted, "host network"), "{granted}");
    assert!(printed(&granted, "insecure"), "{granted}");

    let unknown = setup.build_err(&["--allow", "device"]);
    assert!(unknown.contains("unknown entitlement"), "{unknown}");
}

/// `RUN --mount=type=bind` of the context sees what `.dockerignore` leaves, and its cache
/// follows the content of exactly that.
#[test]
fn context_bind_mounts_follow_dockerignore_and_their_content() {
    let setup = Setup::new(
        Runtime::Embedded,
        "FROM busybox:1\n\
         RUN --mount=type=bind,target=/ctx cat /ctx/data.txt; \\\n\
         \x20   for f in secret.txt logs/a.log logs/keep.log logs; do \\\n\
         \x20     if [ -e /ctx/$f ]; then echo \"has $f\"; else echo \"no $f\"; fi; \\\n\
         \x20   done\n",
    );
    setup.file("data.txt", "version 1\n");
    setup.file("secret.txt", "do not mount\n");
    setup.file("logs/a.log", "noise\n");
    setup.file("logs/keep.log", "kept\n");
    setup.file(".dockerignore", "secret.txt\nlogs\n!logs/keep.log\n");
    let first = setup.build_ok(&["--progress", "plain"]);
    for line in [
        "version 1",
        "no secret.txt",
        "no logs/a.log",
        "has logs/keep.log",
        "has logs",
    ] {
        assert!(printed(&first, line), "{line:?} missing:\n{first}");
    }

    // An ignored file changes: nothing the step sees changed.
    setup.file("secret.txt", "still not mounted\n");
    let cached = setup.build_ok(&["--progress", "plain"]);
    assert_eq!(cached_steps(&cached), 2, "{cached}");

    // A mounted file changes: the step reruns and sees it.
    setup.file("data.txt", "version 2\n");
    let rerun = setup.build_ok(&["--progress", "plain"]);
    assert!(printed(&rerun, "version 2"), "{rerun}");
}

#[test]
fn add_downloads_urls_and_checks_their_checksum() {
    let base = serve_http(vec![("/files/data.txt", b"downloaded\n".to_vec())]);
    // sha256 of "downloaded\n".
    let right = "sha256:30031a9831674dd684c3817399acebc88a116ce5a7a3fbc0cf34d92521a534e6";
    let setup = Setup::new(
        Runtime::Embedded,
        &format!("FROM busybox:1\nADD {base}/files/data.txt /dl/\n"),
    );
    let out = tempfile::tempdir().unwrap();
    setup.build_ok(&["-o", &format!("type=local,dest={}", out.path().display())]);
    let file = out.path().join("dl/data.txt");
    assert_eq!(fs::read_to_string(&file).unwrap(), "downloaded\n");
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o600
    );
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_445_412_480);
    let second = setup.build_ok(&[]);
    assert_eq!(
        cached_steps(&second),
        3,
        "unchanged content is cached:\n{second}"
    );

    setup.file(
        "Dockerfile",
        &format!("FROM busybox:1\nADD --checksum={right} {base}/files/data.txt /dl/\n"),
    );
    setup.build_ok(&[]);

    let wrong = format!("sha256:{}", "0".repeat(64));
    setup.file(
        "Dockerfile",
        &format!("FROM busybox:1\nADD --checksum={wrong} {base}/files/data.txt /dl/\n"),
    );
    let stderr = setup.build_err(&[]);
    assert!(
        stderr.contains(&format!(
            "checksum mismatch for {base}/files/data.txt: expected {wrong}, got sha256:"
        )),
        "{stderr}"
    );

    setup.file(
        "Dockerfile",
        &format!("FROM busybox:1\nADD {base}/missing /dl/\n"),
    );
    let stderr = setup.build_err(&[]);
    assert!(
        stderr.contains(&format!(
            "cannot download {base}/missing: the server answered 404 Not Found"
        )),
        "{stderr}"
    );
}

#[test]
fn prune_keeps_named_images_and_their_cache() {
    let setup = app_setup(Runtime::Embedded);
    setup.build_ok(&["-t", "app:1"]);
    // A build whose only output is a directory leaves cache that no image uses (an
    // untagged build without outputs would stay as a <none> image).
    let other = Setup::new(
        Runtime::Embedded,
        "FROM busybox:1\nRUN echo scratch > /tmp/x\n",
    );
    let untagged = other.context.path().to_str().unwrap().to_string();
    let kiln_at = |args: &[&str]| {
        let out = run(kiln().arg("--root").arg(setup.root.path()).args(args), true);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let exported = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", exported.path().display());
    kiln_at(&["build", "--progress", "quiet", "-o", &output, &untagged]);

    let usage = kiln_at(&["du"]);
    assert!(usage.contains("build cache blobs"), "{usage}");
    // Gone: the untagged RUN and the three steps of app:1's build stage, whose layers
    // are not in the image.
    let pruned = kiln_at(&["prune"]);
    assert!(
        pruned.contains("Removed 4 build cache entries; kept 6"),
        "{pruned}"
    );
    assert!(pruned.contains("Total reclaimed space:"), "{pruned}");
    let again = setup.build_ok(&["-t", "app:1"]);
    assert!(printed(&again, "built"), "the build stage reruns:\n{again}");
    assert_eq!(
        cached_steps(&again),
        6,
        "the image's own steps stay cached:\n{again}"
    );

    let all = kiln_at(&["prune", "--all"]);
    assert!(all.contains("Removed all build cache"), "{all}");
    let usage = kiln_at(&["du"]);
    assert!(
        usage.contains("Reclaimable: 0B (kiln prune), 0B (kiln prune --all)"),
        "{usage}"
    );
    assert!(kiln_at(&["images"]).contains("app "), "images stay");
    let rebuilt = setup.build_ok(&["-t", "app:1"]);
    assert!(printed(&rebuilt, "built"), "no cache is left:\n{rebuilt}");
}

#[test]
fn zstd_archives_and_the_metadata_file_are_what_buildx_writes() {
    let setup = Setup::new(Runtime::Embedded, "FROM busybox:1\nRUN echo hi > /hi\n");
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("z.tar");
    let metadata = out.path().join("metadata.json");
    let iid = out.path().join("iid");
    setup.build_ok(&[
        "-t",
        "z:1",
        "--iidfile",
        iid.to_str().unwrap(),
        "--metadata-file",
        metadata.to_str().unwrap(),
        "-o",
        &format!("type=oci,dest={},compression=zstd", archive.display()),
    ]);
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
    let image_id = fs::read_to_string(&iid).unwrap();
    assert_eq!(metadata["containerimage.config.digest"], image_id.as_str());
    assert_eq!(metadata["image.name"], "docker.io/library/z:1");
    let descriptor = &metadata["containerimage.descriptor"];
    assert_eq!(descriptor["digest"], metadata["containerimage.digest"]);
    assert_eq!(descriptor["platform"]["os"], "linux");

    // skopeo checks every blob's digest while copying; the layers are zstd.
    let copied = out.path().join("copied");
    run(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("dir:{}", copied.display())),
        true,
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(copied.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for layer in layers {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    let top = layers[1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let listing = run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -t", copied.join(top).display())),
        true,
    );
    // The new file and the mount points of /proc, /dev and /sys (busybox:1 lacks them;
    // BuildKit's layers hold them too); /etc, where /etc/hosts was mounted, is unchanged.
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "dev/\nhi\nproc/\nsys/\n"
    );
}

fn a_build_killed_at_any_moment_reruns_to_a_correct_image(runtime: Runtime) {
    let setup = Setup::new(
        runtime,
        "FROM busybox:1\n\
         COPY src/ /src/\n\
         RUN sleep 0.2 && cat /src/a.txt > /out\n\
         RUN --mount=type=cache,target=/cache echo more >> /out && echo x >> /cache/log\n\
         COPY b.txt /b.txt\n",
    );
    setup.file("src/a.txt", "alpha\n");
    setup.file("b.txt", "beta\n");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut delays = Vec::new();
    for round in 0..6 {
        // A different moment each round, from before the base image is unpacked to export.
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let delay = std::time::Duration::from_millis((seed >> 33) % 1200);
        delays.push(delay);
        let mut child = setup
            .command()
            .args(["--no-cache", "-t", "app:1"])
            .arg(setup.context.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap();
        child.wait().unwrap();

        let out = tempfile::tempdir().unwrap();
        let progress = setup.build_ok(&[
            "-t",
            "app:1",
            "-o",
            &format!("type=local,dest={}", out.path().display()),
        ]);
        let context = format!("round {round}, killed after {delays:?}:\n{progress}");
        assert_eq!(
            fs::read_to_string(out.path().join("out")).unwrap(),
            "alpha\nmore\n",
            "{context}"
        );
        assert_eq!(
            fs::read_to_string(out.path().join("b.txt")).unwrap(),
            "beta\n",
            "{context}"
        );
        assert_no_leftovers(setup.root.path());
    }
}

#[test]
fn progress_as_a_live_display_and_as_json() {
    let setup = Setup::new(Runtime::Embedded, "FROM busybox:1\nRUN echo working\n");
    let json = setup.build_ok(&["--progress", "json", "-t", "p:1"]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"started") && kinds.contains(&"completed"),
        "{json}"
    );
    let log = events
        .iter()
        .find(|e| e["event"] == "log")
        .expect("a log event");
    assert_eq!(log["data"], "working\n");
    assert_eq!(log["name"], "[2/2] RUN echo working");
    assert_eq!(events.last().unwrap()["names"], serde_json::json!(["p:1"]));

    // A terminal gets frames that redraw in place; the last one is complete.
    let tty = setup.build_ok(&["--progress", "tty", "--no-cache"]);
    assert!(tty.contains("\x1b[2K"), "{tty:?}");
    let last = tty.rsplit("[+] Building").next().unwrap();
    assert!(last.contains("(2/2) FINISHED"), "{tty:?}");
    assert!(last.contains(" => [2/2] RUN echo working"), "{tty:?}");
}

#[test]
fn only_what_a_changed_file_feeds_reruns() {
    let setup = Setup::new(
        Runtime::Embedded,
        "FROM busybox:1\nCOPY a.txt /\nRUN echo ran-a\nCOPY b.txt /\nRUN echo ran-b\n",
    );
    setup.file("a.txt", "a\n");
    setup.file("b.txt", "b\n");
    let first = setup.build_ok(&["--progress", "plain"]);
    assert!(
        printed(&first, "ran-a") && printed(&first, "ran-b"),
        "{first}"
    );

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let unchanged = setup.build_ok(&["--progress", "plain"]);
    assert_eq!(cached_steps(&unchanged), 5, "{unchanged}");
    // As in BuildKit, a cached rebuild keeps the steps' times, so the image is the same.
    assert_eq!(image_id(&unchanged), image_id(&first), "{unchanged}");

    // A new mtime with the same content changes nothing.
    let later = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    filetime::set_file_mtime(setup.context.path().join("b.txt"), later).unwrap();
    let touched = setup.build_ok(&["--progress", "plain"]);
    assert_eq!(cached_steps(&touched), 5, "{touched}");

    setup.file("b.txt", "B\n");
    let changed = setup.build_ok(&["--progress", "plain"]);
    assert!(!printed(&changed, "ran-a"), "{changed}");
    assert!(printed(&changed, "ran-b"), "{changed}");
    assert_eq!(
        cached_steps(&changed),
        3,
        "FROM, COPY a.txt, RUN:\n{changed}"
    );
}

#[test]
fn source_date_epoch_makes_builds_bit_identical() {
    let setup = app_setup(Runtime::Embedded);
    let metadata = setup.root.path().join("metadata.json");
    let mut digests = Vec::new();
    // The second build reruns every step: the same bytes must come out again.
    for extra in [&[][..], &["--no-cache"][..]] {
        run(
            setup
                .command()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(extra)
                .args(["--metadata-file", metadata.to_str().unwrap()])
                .arg(setup.context.path()),
            true,
        );
        let metadata: serde_json::Value =
            serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
        digests.push(
            metadata["containerimage.digest"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(digests[0], digests[1]);

    // The epoch is part of what steps make: layers cached without it are not reused with
    // it, nor with another epoch, and the reverse.
    let build = |epoch: Option<&str>| {
        let mut command = setup.command();
        command.args(["--progress", "plain"]);
        match epoch {
            Some(epoch) => command.env("SOURCE_DATE_EPOCH", epoch),
            None => command.env_remove("SOURCE_DATE_EPOCH"),
        };
        let out = run(command.arg(setup.context.path()), true);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let steps = |progress: &str| cached_steps(progress);
    let all_cached = steps(&build(Some("1700000000")));
    assert_eq!(
        steps(&build(None)),
        1,
        "only FROM is the same without the epoch"
    );
    assert_eq!(
        steps(&build(Some("1600000000"))),
        1,
        "nor with another epoch"
    );
    assert_eq!(
        steps(&build(None)),
        all_cached,
        "the epoch-less layers stay cached"
    );
}

fn env_arg_and_heredocs_reach_the_image(runtime: Runtime) {
    let setup = Setup::new(
        runtime,
        "ARG BASE=busybox:1\n\
         FROM $BASE\n\
         ARG GREETING=hello\n\
         ENV APP_HOME=/srv/app WHO=world\n\
         WORKDIR $APP_HOME\n\
         COPY <<EOF greeting.txt\n\
         ${GREETING}, ${WHO}\n\
         EOF\n\
         RUN <<EOF\n\
         echo \"built in $(pwd) for $WHO with $GREETING\" > built.txt\n\
         EOF\n",
    );
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("image.tar");
    setup.build_ok(&[
        "--build-arg",
        "GREETING=hi",
        "-o",
        &format!("type=local,dest={}", out.path().join("rootfs").display()),
        "-o",
        &format!("type=oci,dest={}", archive.display()),
    ]);
    let rootfs = out.path().join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/app/greeting.txt")).unwrap(),
        "hi, world\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("srv/app/built.txt")).unwrap(),
        "built in /srv/app for world with hi\n"
    );
    let inspect = run(
        Command::new("skopeo")
            .arg("inspect")
            .arg("--config")
            .arg(format!("oci-archive:{}", archive.display())),
        true,
    );
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(
        env.contains(&serde_json::json!("APP_HOME=/srv/app")),
        "{env:?}"
    );
    assert!(env.contains(&serde_json::json!("WHO=world")), "{env:?}");
    assert_eq!(config["config"]["WorkingDir"], "/srv/app");
}

/// `COPY --from` hard-links unchanged files from the source stage's layers: changing,
/// re-moding or deleting them later must never reach the stage they came from.
#[test]
fn files_copied_from_a_stage_stay_apart_from_it() {
    let setup = Setup::new(
        Runtime::Embedded,
        "FROM busybox:1 AS build\n\
         RUN echo original > /f && mkdir /d && echo in-d > /d/g\n\
         FROM busybox:1 AS changer\n\
         COPY --from=build /f /d /copied/\n\
         RUN echo changed >> /copied/f && chmod 600 /copied/f && rm /copied/g\n\
         FROM busybox:1\n\
         COPY --from=build /f /from-build\n\
         COPY --from=build /d/g /g-from-build\n\
         COPY --from=changer /copied/ /from-changer/\n",
    );
    let out = tempfile::tempdir().unwrap();
    setup.build_ok(&["-o", &format!("type=local,dest={}", out.path().display())]);
    let read = |name: &str| fs::read_to_string(out.path().join(name)).unwrap();
    let mode = |name: &str| {
        fs::metadata(out.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(read("from-build"), "original\n");
    assert_eq!(mode("from-build"), 0o644);
    assert_eq!(read("g-from-build"), "in-d\n");
    assert_eq!(read("from-changer/f"), "original\nchanged\n");
    assert_eq!(mode("from-changer/f"), 0o600);
    assert!(!out.path().join("from-changer/g").exists());
}

/// Steps that change nothing make the same empty layer; a stack holding it more than once
/// still mounts.
#[test]
fn steps_that_change_nothing_can_follow_each_other() {
    let setup = Setup::new(
        Runtime::Embedded,
        "FROM busybox:1\nRUN true\nRUN true\nRUN true\nRUN echo ok > /ok\n",
    );
    let out = tempfile::tempdir().unwrap();
    setup.build_ok(&["-o", &format!("type=local,dest={}", out.path().display())]);
    assert_eq!(fs::read_to_string(out.path().join("ok")).unwrap(), "ok\n");
}

/// Builds share a state directory: three at once all finish, and each names its image.
/// (A process keeps a database open while it uses it and lets go once idle; the others
/// wait for it.)
#[test]
fn concurrent_builds_share_a_state_directory() {
    let setup = app_setup(Runtime::Embedded);
    let started = std::time::Instant::now();
    let builds: Vec<_> = (0..3)
        .map(|n| {
            setup
                .command()
                .args([
                    "--progress",
                    "plain",
                    "--no-cache",
                    "-t",
                    &format!("app:{n}"),
                ])
                .arg(setup.context.path())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for build in builds {
        let out = build.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Not a speed check: a build that waited out another's database lock (two minutes)
    // would still succeed, with cache misses.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the builds waited for each other's databases"
    );
    let images = run(
        kiln().arg("--root").arg(setup.root.path()).arg("images"),
        true,
    );
    let images = String::from_utf8_lossy(&images.stdout);
    for n in 0..3 {
        let tag = n.to_string();
        let named = images.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 1 && fields[0] == "app" && fields[1] == tag
        });
        assert!(named, "app:{n} missing:\n{images}");
    }
}
