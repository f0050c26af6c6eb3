//! RUN through a real runtime (runc, installed by `scripts/test`) over a
//! busybox root filesystem.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use kiln_cache::ContentStore;
use kiln_solver::{ExecOp, NetworkMode, Platform, SecurityMode};

use super::*;
use crate::layer::WriteOptions;
use crate::snapshot::{Snapshot, Snapshotter};

struct Fixture {
    state: tempfile::TempDir,
    content: ContentStore,
    snapshots: Snapshotter,
    base: Snapshot,
}

/// A snapshot of `dirs`, the busybox binary `busybox` with `applets`, and `/etc/passwd`
/// and `/etc/group` of `users` (name, id).
fn rootfs_fixture(
    busybox: &std::path::Path,
    dirs: &[&str],
    applets: &[&str],
    users: &[(&str, u32)],
) -> Fixture {
    let state = tempfile::tempdir().unwrap();
    let content = ContentStore::open(state.path().join("content")).unwrap();
    let snapshots = Snapshotter::open(state.path().join("snapshots")).unwrap();
    let active = snapshots.prepare(&Snapshot::default(), &content).unwrap();
    let root = active.rootfs();
    for dir in ["bin", "etc"].iter().chain(dirs) {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for applet in applets {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let home = |name: &str| {
        if name == "root" {
            "/root".to_string()
        } else {
            format!("/home/{name}")
        }
    };
    let passwd: String = users
        .iter()
        .map(|(name, id)| format!("{name}:x:{id}:{id}::{}:/bin/sh\n", home(name)))
        .collect();
    let group: String = users
        .iter()
        .map(|(name, id)| format!("{name}:x:{id}:\n"))
        .collect();
    fs::write(root.join("etc/passwd"), passwd).unwrap();
    fs::write(root.join("etc/group"), group).unwrap();
    let base = active
        .commit(&Snapshot::default(), &content, WriteOptions::default())
        .unwrap();
    Fixture {
        state,
        content,
        snapshots,
        base,
    }
}

/// A snapshot with busybox (installed by `scripts/test`), a couple of users, and nothing
/// else.
fn busybox() -> Fixture {
    rootfs_fixture(
        std::path::Path::new("/bin/busybox"),
        &[],
        &["sh", "echo", "cat", "id", "ls", "pwd", "touch"],
        &[("root", 0), ("app", 1000)],
    )
}

fn exec_op(script: &str) -> ExecOp {
    ExecOp {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        network: NetworkMode::Default,
        security: SecurityMode::Sandbox,
        mounts: Vec::new(),
        platform: Platform::host(),
        ulimits: Vec::new(),
        extra_hosts: Vec::new(),
        hostname: None,
    }
}

/// Runs `op` over a fresh snapshot of the fixture; returns the output and
/// the result, and the committed snapshot when it succeeded.
fn run_op(fixture: &Fixture, op: &ExecOp) -> (String, anyhow::Result<Snapshot>) {
    run_op_with(fixture, op, Vec::new())
}

/// [`run_op`] with extra sandbox mounts.
fn run_op_with(
    fixture: &Fixture,
    op: &ExecOp,
    mounts: Vec<SandboxMount>,
) -> (String, anyhow::Result<Snapshot>) {
    let runtime = ExternalRuntime::new("runc", fixture.state.path().join("runc"));
    let active = fixture
        .snapshots
        .prepare(&fixture.base, &fixture.content)
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // Standard error is kept apart: the two streams interleave at random.
    let output = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let request = ExecRequest {
        op,
        extra_env: &[],
        rootfs: active.rootfs(),
        mounts,
        secrets: &[],
        scratch: scratch.path(),
        networks: &NetworkPool::new(fixture.snapshots.scratch_root()),
    };
    let result = run(
        &runtime,
        &request,
        &|stream, bytes| match stream {
            LogStream::Stdout => output.lock().unwrap().extend_from_slice(bytes),
            LogStream::Stderr => errors.lock().unwrap().extend_from_slice(bytes),
        },
        &AtomicBool::new(false),
    );
    let mut output = output.into_inner().unwrap();
    output.extend(errors.into_inner().unwrap());
    let output = String::from_utf8(output).unwrap();
    let result = result
        .and_then(|()| active.commit(&fixture.base, &fixture.content, WriteOptions::default()));
    (output, result)
}

#[test]
fn runs_as_the_user_in_the_working_directory() {
    let fixture = busybox();
    let mut op = exec_op("id -u; id -g; pwd; echo $PATH; echo to-stderr >&2; touch mine");
    op.user = "app".into();
    op.cwd = "/work/dir".into();
    op.env.clear();
    let (output, result) = run_op(&fixture, &op);
    let snapshot = result.unwrap();
    assert!(
        output.contains(
            "1000\n1000\n/work/dir\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        ),
        "{output}"
    );
    assert!(output.contains("to-stderr"), "{output}");
    let view = fixture
        .snapshots
        .prepare(&snapshot, &fixture.content)
        .unwrap();
    let meta = fs::metadata(view.rootfs().join("work/dir/mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    // Mount points of the step's own mounts are not part of the layer; those of the
    // runtime's filesystems are, as BuildKit leaves them.
    for path in ["etc/hosts", "etc/resolv.conf"] {
        assert!(
            !view.rootfs().join(path).exists(),
            "{path} leaked into the layer"
        );
    }
    for path in ["proc", "dev", "sys"] {
        let meta = fs::symlink_metadata(view.rootfs().join(path)).unwrap();
        assert!(meta.is_dir(), "{path}");
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o755, 0, 0),
            "{path}"
        );
    }
}

#[test]
fn failing_commands_report_their_exit_code() {
    let fixture = busybox();
    let (output, result) = run_op(&fixture, &exec_op("echo before; exit 3"));
    assert!(output.contains("before"));
    let message = result.unwrap_err().to_string();
    assert_eq!(
        message,
        "process \"/bin/sh -c echo before; exit 3\" did not complete successfully: exit code: 3"
    );
}

#[test]
fn network_none_has_only_loopback_and_the_host_is_invisible() {
    let fixture = busybox();
    let mut op = exec_op(
        "ls /sys/class/net; cat /etc/hosts; ls /; echo x > /etc/hosts || echo hosts-readonly",
    );
    op.network = NetworkMode::None;
    let (output, result) = run_op(&fixture, &op);
    result.unwrap();
    assert!(output.starts_with("lo\n"), "{output}");
    assert!(output.contains("buildkitsandbox"), "{output}");
    assert!(output.contains("hosts-readonly"), "{output}");
    assert!(
        !output.contains("work\n") && !output.contains("root\n"),
        "host directories visible: {output}"
    );
}

#[test]
fn unknown_users_fail_before_running() {
    let fixture = busybox();
    let mut op = exec_op("true");
    op.user = "nobody".into();
    let (_, result) = run_op(&fixture, &op);
    assert_eq!(
        result.unwrap_err().to_string(),
        "process \"/bin/sh -c true\" did not complete successfully: unable to find user \
         nobody: no matching entries in passwd file"
    );
}

/// The arm64 busybox `scripts/test` provides: `$KILN_TEST_ARM64_BUSYBOX`, else
/// `target/fixtures/busybox-arm64` in the workspace.
fn arm64_busybox_binary() -> std::path::PathBuf {
    let from_env = std::env::var_os("KILN_TEST_ARM64_BUSYBOX")
        .map(std::path::PathBuf::from)
        .filter(|path| path.is_file());
    let in_workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures/busybox-arm64");
    from_env
        .or_else(|| in_workspace.is_file().then_some(in_workspace.clone()))
        .unwrap_or_else(|| {
            panic!(
                "no arm64 busybox: neither $KILN_TEST_ARM64_BUSYBOX nor {} is a file; \
                 run scripts/test, which puts it there",
                in_workspace.display()
            )
        })
}

/// A snapshot with an arm64 busybox and an existing, empty `/usr/libexec` (so that a
/// stub for the QEMU interpreter is made inside a directory of the base).
fn arm64_busybox() -> Fixture {
    rootfs_fixture(
        &arm64_busybox_binary(),
        &["usr/libexec"],
        &["sh", "uname", "test", "echo"],
        &[("root", 0)],
    )
}

/// The paths in a snapshot's top layer.
fn top_layer_entries(fixture: &Fixture, snapshot: &Snapshot) -> Vec<String> {
    crate::layer::layer_paths(&fixture.content, snapshot.layers.last().unwrap())
}

#[test]
fn foreign_platforms_run_under_qemu() {
    let arm64 = Platform::new("linux", "arm64", "");
    let fixture = arm64_busybox();
    let emulator = crate::emulation::emulator_for(&arm64).unwrap_or_else(|e| panic!("{e}"));
    let mut op = exec_op(
        "uname -m; test -f /usr/libexec/qemu-binfmt/aarch64-binfmt-P && echo interpreter-bound; \
         echo made > /made",
    );
    op.platform = arm64.clone();

    // As the handler is registered (here with F: no mount needed).
    let (output, result) = run_op_with(&fixture, &op, emulator.mount().into_iter().collect());
    let snapshot = result.unwrap_or_else(|e| panic!("{e:#}: {output}"));
    assert_eq!(output, "aarch64\n");
    assert_eq!(
        top_layer_entries(&fixture, &snapshot),
        ["dev/", "made", "proc/", "sys/"]
    );

    // As a handler without F: the host's interpreter is bound at the handler's path and
    // its mount stubs stay out of the layer.
    let unfixed = crate::emulation::Emulator {
        fix_binary: false,
        ..emulator
    };
    let mount = unfixed.mount().expect("a handler without F needs a mount");
    let SandboxMount::Bind { target, source, .. } = &mount else {
        panic!("{mount:?}");
    };
    assert_eq!(Path::new(target), unfixed.interpreter());
    assert!(source.is_file() && !source.is_symlink(), "{source:?}");
    op.args[2] = format!("uname -m; test -f {target} && echo interpreter-bound; echo made > /made");
    let (output, result) = run_op_with(&fixture, &op, vec![mount.clone()]);
    let snapshot = result.unwrap_or_else(|e| panic!("{e:#}: {output}"));
    assert_eq!(output, "aarch64\ninterpreter-bound\n");
    assert_eq!(
        top_layer_entries(&fixture, &snapshot),
        ["dev/", "made", "proc/", "sys/"]
    );
}
