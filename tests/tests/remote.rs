//! `kiln serve` driven by `kiln build --builder`: BuildKit's Control API over a unix
//! socket and loopback TCP, the session's file sync and output transfer, many clients.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::daemon::Daemon;
use kiln_tests::ssh::{Agent, context_with_ssh_tools, keygen};
use kiln_tests::{busybox_archives, kiln, load_into, run};

/// A build context holding only `dockerfile`.
fn context_of(dockerfile: impl AsRef<[u8]>) -> tempfile::TempDir {
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
    context
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{stderr}");
    stderr
}

/// The image ID a build printed (`writing image sha256:…`).
fn image_id(progress: &str) -> String {
    progress
        .lines()
        .find_map(|l| l.strip_prefix("writing image "))
        .unwrap_or_else(|| panic!("no image ID in:\n{progress}"))
        .to_string()
}

/// The two-stage test application, with a file that `.dockerignore` keeps out.
fn app_context() -> tempfile::TempDir {
    let context = tempfile::tempdir().unwrap();
    let files = [
        ("Dockerfile", include_str!("../fixtures/app.Dockerfile")),
        ("src/a.txt", "alpha\n"),
        ("src/b.txt", "beta\n"),
        ("src/secret.txt", "do not ship\n"),
        ("config.ini", "[app]\n"),
        (".dockerignore", "src/secret.txt\n"),
    ];
    for (name, content) in files {
        let path = context.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    context
}

/// What the daemon said it transferred of the context: (files changed, bytes).
fn transferred(progress: &str) -> (u64, u64) {
    let line = progress
        .lines()
        .find(|l| l.contains("transferring context:"))
        .unwrap_or_else(|| panic!("no transfer line in:\n{progress}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let n = numbers.len();
    (numbers[n - 3], numbers[n - 1])
}

#[test]
fn a_remote_build_is_the_local_build_with_outputs_on_the_client() {
    let archives = busybox_archives();
    let daemon = Daemon::start(&archives, &[]);
    let context = app_context();
    let out = tempfile::tempdir().unwrap();
    let fs_out = out.path().join("fs");
    let archive = out.path().join("app.tar");
    let metadata = out.path().join("metadata.json");
    let epoch = "SOURCE_DATE_EPOCH=1700000000";
    let remote = ok(&daemon.build(
        context.path(),
        &[
            "--build-arg",
            epoch,
            "--metadata-file",
            metadata.to_str().unwrap(),
            "-t",
            "app:1",
            "-o",
            &format!("type=local,dest={}", fs_out.display()),
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    ));
    assert!(remote.contains("built"), "step output is shown:\n{remote}");

    // The same build, locally, gives the same image.
    let local_root = tempfile::tempdir().unwrap();
    load_into(local_root.path(), &archives.oci);
    let local = run(
        kiln()
            .arg("--root")
            .arg(local_root.path())
            .args(["build", "--progress", "plain", "--build-arg", epoch])
            .arg(context.path()),
        true,
    );
    assert_eq!(
        image_id(&remote),
        image_id(&String::from_utf8_lossy(&local.stderr)),
        "remote and local builds differ"
    );

    // Outputs landed here; the ignored file never left the client.
    assert_eq!(
        fs::read_to_string(fs_out.join("app/combined")).unwrap(),
        "alpha\nbeta\n"
    );
    assert_eq!(
        fs::read_to_string(fs_out.join("home/app/uid")).unwrap(),
        "1000\n"
    );
    let inspected = run(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive.display())),
        true,
    );
    let inspected: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 6);
    // The builder's descriptor of the archive's manifest reaches the metadata file.
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
    let index = kiln_tests::archive_index(&archive);
    let descriptor = &metadata["containerimage.descriptor"];
    assert_eq!(
        descriptor["digest"], index["manifests"][0]["digest"],
        "{metadata}"
    );
    assert_eq!(
        descriptor["size"], index["manifests"][0]["size"],
        "{metadata}"
    );
    let synced: Vec<PathBuf> = kiln_tests::walk(&daemon.root.path().join("sessions"));
    assert!(
        synced.iter().any(|p| p.ends_with("src/a.txt")),
        "the context was synced: {synced:?}"
    );
    assert!(
        !synced.iter().any(|p| p.ends_with("secret.txt")),
        "an ignored file crossed the wire: {synced:?}"
    );
    // The tag names the image in the daemon's store.
    let images = run(
        kiln().arg("--root").arg(daemon.root.path()).arg("images"),
        true,
    );
    assert!(String::from_utf8_lossy(&images.stdout).contains("app "));
}

#[test]
fn a_rebuild_transfers_only_the_changed_file() {
    let daemon = Daemon::start(&busybox_archives(), &[]);
    let context = app_context();
    for i in 0..200 {
        let path = context.path().join(format!("src/more/{i}.txt"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("file {i}\n")).unwrap();
    }
    let first = ok(&daemon.build(context.path(), &[]));
    let (files, _) = transferred(&first);
    assert!(files >= 200, "first build sends everything:\n{first}");

    fs::write(context.path().join("src/more/7.txt"), "changed!\n").unwrap();
    let second = ok(&daemon.build(context.path(), &[]));
    assert_eq!(transferred(&second), (1, 9), "{second}");
    assert!(
        second.contains("built"),
        "the changed file reran its step:\n{second}"
    );

    let third = ok(&daemon.build(context.path(), &[]));
    assert_eq!(transferred(&third), (0, 0), "{third}");
}

#[test]
fn failures_point_at_the_dockerfile_and_loopback_tcp_works() {
    let port = free_port();
    let tcp = format!("tcp://127.0.0.1:{port}");
    let daemon = Daemon::start(&busybox_archives(), &["--addr", &tcp]);
    let context = context_of("FROM busybox:1\nRUN echo about to fail && exit 3\n");
    wait_for_port(port);
    let out = kiln()
        .args(["build", "--progress", "plain", "--builder", &tcp])
        .arg(context.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("about to fail"), "{stderr}");
    assert!(stderr.contains("exit code: 3"), "{stderr}");
    assert!(stderr.contains(">>> RUN echo about to fail"), "{stderr}");

    // Disk use and prune through the builder.
    let usage = run(kiln().args(["du", "--builder", &tcp]), true);
    let usage = String::from_utf8_lossy(&usage.stdout);
    assert!(
        usage.contains("image-blobs") && usage.contains("Total:"),
        "{usage}"
    );
    let pruned = run(kiln().args(["prune", "--builder", &tcp]), true);
    assert!(
        String::from_utf8_lossy(&pruned.stdout).contains("Total reclaimed space:"),
        "{pruned:?}"
    );
    drop(daemon);
}

#[test]
fn four_clients_at_once_share_the_cache() {
    let daemon = Daemon::start(&busybox_archives(), &[]);
    let contexts: Vec<tempfile::TempDir> = (0..4).map(|_| app_context()).collect();
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let builds: Vec<_> = contexts
            .iter()
            .map(|context| scope.spawn(|| daemon.build(context.path(), &[])))
            .collect();
        builds.into_iter().map(|b| b.join().unwrap()).collect()
    });
    let progress: Vec<String> = outputs.iter().map(ok).collect();
    let ids: Vec<String> = progress.iter().map(|p| image_id(p)).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // The build stage's RUN prints "built": one client ran it, the others waited for it.
    let ran = progress
        .iter()
        .filter(|p| {
            p.lines().any(|l| {
                let mut parts = l.splitn(3, ' ');
                parts.next().is_some_and(|n| n.starts_with('#'))
                    && parts.next().is_some_and(|t| t.parse::<f64>().is_ok())
                    && parts.next() == Some("built")
            })
        })
        .count();
    assert_eq!(ran, 1, "{progress:#?}");
}

/// Whether a process with exactly `cmdline` (NUL-separated) runs.
fn running(cmdline: &[u8]) -> bool {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .any(|c| c == cmdline)
}

/// Starts a remote build whose one step is `sleep SECONDS` (a number no other test uses,
/// to find the process among the host's) and waits until that step runs; returns the
/// client, the step's command line, and its context.
fn start_long_build(daemon: &Daemon, seconds: u32) -> (Child, Vec<u8>, tempfile::TempDir) {
    let context = context_of(format!("FROM busybox:1\nRUN sleep {seconds}\n"));
    let cmdline = format!("sleep\0{seconds}\0").into_bytes();
    let client = kiln()
        .args(["build", "--progress", "plain", "--builder", &daemon.address])
        .arg(context.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !running(&cmdline) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (client, cmdline, context)
}

#[test]
fn an_interrupted_client_cancels_its_build() {
    let daemon = Daemon::start(&busybox_archives(), &[]);
    let (mut client, cmdline, context) = start_long_build(&daemon, 987);
    client.kill().unwrap();
    client.wait().unwrap();
    let killed = Instant::now();
    while running(&cmdline) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the step outlived its client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon serves the next build.
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN true\n",
    )
    .unwrap();
    ok(&daemon.build(context.path(), &[]));
}

#[test]
fn sigterm_cancels_running_builds_and_stops_the_daemon_cleanly() {
    let mut daemon = Daemon::start(&busybox_archives(), &[]);
    let (client, cmdline, _context) = start_long_build(&daemon, 986);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon.child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the daemon exited with {status}");
    assert!(!running(&cmdline), "the step outlived the daemon");
    let socket = daemon.address.trim_start_matches("unix://");
    assert!(!Path::new(socket).exists(), "the socket stayed behind");
    let out = client.wait_with_output().unwrap();
    assert!(!out.status.success(), "the interrupted build succeeded");
}

/// The daemon pulls and pushes with the client's registry credentials, asked for through
/// the session, and never with its own.
#[test]
fn registry_credentials_come_from_the_client() {
    let archives = busybox_archives();
    let registry = kiln_tests::registry::Registry::start(Some(("kiln", "secret")));
    let host = registry.host.clone();
    run(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--dest-creds",
                "kiln:secret",
            ])
            .arg(format!("oci-archive:{}", archives.oci.display()))
            .arg(format!("docker://{host}/busybox:1")),
        true,
    );
    let daemon = Daemon::start(&archives, &[]);
    let context = context_of(format!(
        "FROM {host}/busybox:1\nRUN echo pulled > /pulled\n"
    ));
    let build = |docker_config: &Path| {
        kiln()
            .env("DOCKER_CONFIG", docker_config)
            .args(["build", "--progress", "plain", "--builder", &daemon.address])
            .args(["-t", &format!("{host}/app:1"), "--push"])
            .arg(context.path())
            .output()
            .unwrap()
    };
    let anonymous = tempfile::tempdir().unwrap();
    let refused = build(anonymous.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("needs a login"), "{stderr}");

    let logged_in = kiln_tests::docker_config_with_login(&host, "kiln", "secret");
    ok(&build(logged_in.path()));
    let inspected = run(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", "kiln:secret"])
            .arg(format!("docker://{host}/app:1")),
        true,
    );
    let inspected: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
}

/// A Python environment with grpcio, grpcio-tools and hyper-h2 from PyPI, made once in the
/// target directory.
/// A remote build's secrets come from the client's session, one by one as steps mount
/// them; the daemon keeps none of them.
#[test]
fn secrets_come_from_the_client_session() {
    let archives = busybox_archives();
    let daemon = Daemon::start(&archives, &[]);
    let context = context_of(
        "FROM busybox:1\n\
         RUN --mount=type=secret,id=token cp /run/secrets/token /copied\n\
         RUN --mount=type=secret,id=missing,required=false test ! -e /run/secrets/missing\n",
    );
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = format!("remote-secret-{}", std::process::id());
    fs::write(secret_dir.path().join("token"), &secret).unwrap();
    let out = tempfile::tempdir().unwrap();
    ok(&daemon.build(
        context.path(),
        &[
            "--secret",
            &format!("id=token,src={}", secret_dir.path().join("token").display()),
            "-o",
            &format!("type=local,dest={}", out.path().display()),
        ],
    ));
    assert_eq!(
        fs::read_to_string(out.path().join("copied")).unwrap(),
        secret
    );
    // Copied into the image on purpose here; what the daemon keeps besides is checked by
    // the local secrets test. A required secret the client lacks fails the build.
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN --mount=type=secret,id=nope,required=true true\n",
    )
    .unwrap();
    let failed = daemon.build(context.path(), &[]);
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("secret nope: not found"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}

/// `--ssh` agents stay on the client: the daemon's step talks to them through the
/// session's SSH service (BuildKit's `ForwardAgent` streams), read-only.
#[test]
fn ssh_agents_are_lent_through_the_client_session() {
    let archives = busybox_archives();
    let daemon = Daemon::start(&archives, &[]);
    let keys = tempfile::tempdir().unwrap();
    let (key, fingerprint) = keygen(keys.path(), "remote");
    let agent = Agent::start(&[&key]);
    let context = context_with_ssh_tools(
        "RUN --mount=type=ssh ssh-add -l > /listed && { ssh-add -D 2>&1 || echo refused; } > /removed\n",
    );
    let out = tempfile::tempdir().unwrap();
    let built = kiln()
        .args(["build", "--progress", "plain", "--builder", &daemon.address])
        .args(["--ssh", "default", "-o"])
        .arg(format!("type=local,dest={}", out.path().display()))
        .arg(context.path())
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    ok(&built);
    let read = |name: &str| fs::read_to_string(out.path().join(name)).unwrap();
    assert_eq!(read("listed").trim(), fingerprint);
    assert!(read("removed").contains("refused"), "{}", read("removed"));
    let listed = run(agent.ssh_add().arg("-l"), true);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), fingerprint);
    // Without --ssh, a required agent is missing, in BuildKit's words.
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN --mount=type=ssh,required=true true\n",
    )
    .unwrap();
    let failed = daemon.build(context.path(), &[]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("no SSH key \"default\" forwarded from the client"),
        "{stderr}"
    );
}

/// `--shm-size`, `--ulimit` and `--add-host` reach the daemon as BuildKit's frontend
/// attributes (`shm-size`, `ulimit`, `add-hosts`) and its RUN steps see them.
#[test]
fn run_options_travel_as_frontend_attributes() {
    let archives = busybox_archives();
    let daemon = Daemon::start(&archives, &[]);
    let context = context_of(
        "FROM busybox:1\n\
         RUN { df -k /dev/shm | tail -n 1; ulimit -Sn; ulimit -Hn; tail -n 1 /etc/hosts; } > /seen\n",
    );
    let out = tempfile::tempdir().unwrap();
    ok(&daemon.build(
        context.path(),
        &[
            "--shm-size",
            "96m",
            "--ulimit",
            "nofile=321:654",
            "--add-host",
            "Db:[fd00::5]",
            "-o",
            &format!("type=local,dest={}", out.path().display()),
        ],
    ));
    let seen = fs::read_to_string(out.path().join("seen")).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0].split_whitespace().nth(1), Some("98304"), "{seen}");
    assert_eq!(lines[1..], ["321", "654", "fd00::5\tdb"], "{seen}");
}

/// `--build-context NAME=DIR` on a remote builder: the directory travels in the session
/// like the main context.
#[test]
fn named_directories_travel_with_the_session() {
    let archives = busybox_archives();
    let daemon = Daemon::start(&archives, &[]);
    let context = context_of("FROM busybox:1\nCOPY --from=docs /guide.md /guide.md\n");
    let docs = tempfile::tempdir().unwrap();
    fs::write(docs.path().join("guide.md"), "from afar\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    ok(&daemon.build(
        context.path(),
        &[
            "--build-context",
            &format!("docs={}", docs.path().display()),
            "-o",
            &format!("type=local,dest={}", out.path().display()),
        ],
    ));
    assert_eq!(
        fs::read_to_string(out.path().join("guide.md")).unwrap(),
        "from afar\n"
    );
}

fn python_with_grpc() -> PathBuf {
    let venv = kiln_tests::repo_root().join("target/independent-client-venv");
    let python = venv.join("bin/python");
    let ready = venv.join("ready");
    if !ready.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            true,
        );
        run(
            Command::new(venv.join("bin/pip")).args([
                "install",
                "-q",
                "grpcio",
                "grpcio-tools",
                "h2",
            ]),
            true,
        );
        fs::write(&ready, "").unwrap();
    }
    python
}

/// A client written with Python's grpcio and hyper-h2 from kiln's .proto files, sharing
/// no code with kiln, lists workers, asks for info and disk use, and runs a build whose
/// session (an HTTP/2 server inside the tunnel) it serves itself, naming the frontend in
/// its Solve and again through a build function (the gateway API), as buildctl does.
#[test]
fn an_independent_grpcio_client_speaks_to_the_daemon() {
    let daemon = Daemon::start(&busybox_archives(), &[]);
    let context = context_of(
        "FROM busybox:1\nARG GREETING\nCOPY hello.txt /\nRUN echo \"$GREETING\" && cat /hello.txt\n",
    );
    fs::write(context.path().join("hello.txt"), "hi from the file\n").unwrap();
    let out = run(
        Command::new(python_with_grpc())
            .arg(kiln_tests::repo_root().join("tests/python/independent_client.py"))
            .arg(daemon.address.trim_start_matches("unix://"))
            .arg(kiln_tests::repo_root().join("api/proto"))
            .arg(context.path()),
        true,
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host = format!("linux/{}", kiln_tests::host_arch());
    assert_eq!(seen["platforms"][0], host.as_str(), "{seen}");
    // QEMU (installed by scripts/test) makes arm64 runnable: the worker says so.
    assert!(
        seen["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "linux/arm64"),
        "{seen}"
    );
    assert_eq!(seen["version"], env!("CARGO_PKG_VERSION"), "{seen}");
    assert!(seen["usage"].as_array().unwrap().len() > 1, "{seen}");
    assert!(
        seen["digest"].as_str().unwrap().starts_with("sha256:"),
        "{seen}"
    );
    // The same build through a build function: the same image.
    assert_eq!(seen["gateway_digest"], seen["digest"], "{seen}");
    let steps = seen["steps"].to_string();
    assert!(steps.contains("RUN echo"), "{seen}");
    assert!(
        steps.contains("transferring context: 2 of 2 files changed"),
        "{seen}"
    );
    let images = run(
        kiln().arg("--root").arg(daemon.root.path()).arg("images"),
        true,
    );
    assert!(String::from_utf8_lossy(&images.stdout).contains("independent "));
}

/// After SIGKILL, a restarted daemon removes what the killed one left (its running
/// container first) as it starts, and builds again.
#[test]
fn a_restarted_daemon_recovers_from_sigkill() {
    let archives = busybox_archives();
    let mut daemon = Daemon::start(&archives, &[]);
    let (_client, cmdline, context) = start_long_build(&daemon, 985);
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(
        running(&cmdline),
        "the container should outlive a SIGKILLed daemon"
    );
    let socket = daemon.address.trim_start_matches("unix://").to_string();
    let restarted = kiln()
        .arg("--root")
        .arg(daemon.root.path())
        .args(["serve", "--addr", &daemon.address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    daemon.child = restarted;
    let started = Instant::now();
    while running(&cmdline) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the restarted daemon left the killed one's container running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "kiln serve did not restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN echo again\n",
    )
    .unwrap();
    assert!(ok(&daemon.build(context.path(), &[])).contains("again"));
}

/// Garbage on the socket, and a client that hangs up mid-call, cost the daemon nothing.
#[test]
fn garbage_and_hang_ups_leave_the_daemon_serving() {
    use std::io::Write as _;
    let daemon = Daemon::start(&busybox_archives(), &[]);
    let socket = daemon.address.trim_start_matches("unix://");
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        // The HTTP/2 preface, then a frame header that promises more than follows.
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x10\x00\x01\x04\x00\x00\x00\x01"[..],
    ] {
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let _ = stream.write_all(garbage);
        drop(stream);
    }
    let context = context_of("FROM busybox:1\nRUN echo still here\n");
    assert!(ok(&daemon.build(context.path(), &[])).contains("still here"));
}

#[test]
fn a_daemon_refuses_to_listen_unauthenticated_beyond_loopback() {
    let root = tempfile::tempdir().unwrap();
    let out = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .args(["serve", "--addr", "tcp://0.0.0.0:0"]),
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on tcp://0.0.0.0:0 without authentication"),
        "{stderr}"
    );
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`.
fn wait_for_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes, with openssl, a CA with a server certificate for 127.0.0.1 and a client
/// certificate, and another CA with a client certificate of its own.
fn certificates(dir: &Path) {
    let script = r#"
set -e
ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes     -keyout $1.key -out $1.pem -days 2 -subj "/CN=$1"     -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; }
leaf() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes       -keyout $1.key -out $1.csr -subj "/CN=$1"
  printf 'basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=%s
' $3 > $1.ext
  if [ -n "$4" ]; then printf 'subjectAltName=%s
' "$4" >> $1.ext; fi
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem       -days 2 -extfile $1.ext
}
ca ca; ca other
leaf server ca serverAuth IP:127.0.0.1
leaf client ca clientAuth
leaf stranger other clientAuth
"#;
    run(
        Command::new("bash")
            .args(["-c", script])
            .current_dir(dir)
            .stderr(Stdio::null()),
        true,
    );
}

#[test]
fn mutual_tls_lets_in_only_clients_with_a_certificate_of_its_ca() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let port = free_port();
    // TLS makes a non-loopback address acceptable.
    let daemon = Daemon::start(
        &busybox_archives(),
        &[
            "--addr",
            &format!("tcp://0.0.0.0:{port}"),
            "--tlscacert",
            &file("ca.pem"),
            "--tlscert",
            &file("server.pem"),
            "--tlskey",
            &file("server.key"),
        ],
    );
    wait_for_port(port);
    let tcp = format!("tcp://127.0.0.1:{port}");
    let with = |who: &str| {
        vec![
            "--builder".to_string(),
            tcp.clone(),
            "--tlscacert".into(),
            file("ca.pem"),
            "--tlscert".into(),
            file(&format!("{who}.pem")),
            "--tlskey".into(),
            file(&format!("{who}.key")),
        ]
    };
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1
RUN echo over tls
",
    )
    .unwrap();
    let built = run(
        kiln()
            .args(["build", "--progress", "plain"])
            .args(with("client"))
            .arg(context.path()),
        true,
    );
    assert!(String::from_utf8_lossy(&built.stderr).contains("over tls"));

    // No certificate (plain text to a TLS port), and a certificate of another CA.
    let plain = run(kiln().args(["du", "--builder", &tcp]), false);
    let plain = String::from_utf8_lossy(&plain.stderr);
    assert!(plain.contains("wants mutual TLS"), "{plain}");
    let stranger = run(kiln().arg("du").args(with("stranger")), false);
    let stranger = String::from_utf8_lossy(&stranger.stderr);
    assert!(stranger.contains("broke off the connection"), "{stranger}");
    drop(daemon);
}

/// `--platform a,b` on a remote builder: the daemon builds both and the client gets the
/// index and each platform's folder.
#[test]
fn platforms_travel_to_the_builder() {
    let archives = busybox_archives();
    let daemon = Daemon::start(&archives, &[]);
    let context = context_of(
        "FROM --platform=$BUILDPLATFORM busybox:1 AS cross\nRUN uname -m > /built-on\n\
         FROM scratch\nCOPY --from=cross /built-on /\n",
    );
    let out = tempfile::tempdir().unwrap();
    let iidfile = out.path().join("iid");
    let progress = ok(&daemon.build(
        context.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--iidfile",
            iidfile.to_str().unwrap(),
            "-o",
            &format!("type=local,dest={}", out.path().join("dirs").display()),
        ],
    ));
    assert!(
        progress.contains("[linux/amd64 cross 2/2] RUN uname -m > /built-on"),
        "{progress}"
    );
    for platform in ["linux_amd64", "linux_arm64"] {
        let built_on = out.path().join("dirs").join(platform).join("built-on");
        assert_eq!(fs::read_to_string(&built_on).unwrap(), "x86_64\n");
    }
    // As buildx: the iidfile of a multi-platform build names the index.
    let iid = fs::read_to_string(&iidfile).unwrap();
    assert!(
        progress.contains(&format!("exporting manifest list {iid}")),
        "{progress}"
    );
}

/// `--cache-to`/`--cache-from` travel as BuildKit's cache options: the daemon exports to
/// a registry, and a local build on a fresh state directory finds every step there.
#[test]
fn cache_options_travel_to_the_builder() {
    let registry = kiln_tests::registry::Registry::start(None);
    let archives = busybox_archives();
    let daemon = Daemon::start(&archives, &[]);
    let context = context_of("FROM busybox:1\nRUN echo ran | tr a-z A-Z\n");
    let cache = format!("{}/cache:remote", registry.host);
    let progress = ok(&daemon.build(
        context.path(),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    ));
    assert!(progress.contains("RAN"), "{progress}");

    let root = tempfile::tempdir().unwrap();
    load_into(root.path(), &archives.oci);
    let out = kiln()
        .arg("--root")
        .arg(root.path())
        .args(["build", "--progress", "plain", "--cache-from", &cache])
        .arg(context.path())
        .output()
        .unwrap();
    let progress = ok(&out);
    assert!(!progress.contains("RAN"), "the step ran again:\n{progress}");

    // A directory cache would live on the client: the daemon says so.
    let out = daemon.build(context.path(), &["--cache-from", "type=local,src=/tmp"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot use a type=local cache"), "{stderr}");
}

/// `--node linux/arm64=ADDR` with `--builder` for the rest: each platform builds on its
/// builder, which pushes its part by digest, and the client pushes the index.
#[test]
fn platforms_build_on_their_nodes_into_one_index() {
    let registry = kiln_tests::registry::Registry::start(None);
    let host = &registry.host;
    kiln_tests::push_multi_platform_busybox(host, "busybox:1");
    let archives = busybox_archives();
    let amd64 = Daemon::start(&archives, &[]);
    let arm64 = Daemon::start(&archives, &[]);
    let context = context_of(format!("FROM {host}/busybox:1\nRUN uname -m > /arch\n"));
    let app = format!("{host}/app:nodes");
    let metadata = context.path().join("metadata.json");
    let out = kiln()
        .args(["build", "--progress", "plain", "--builder", &amd64.address])
        .args(["--node", &format!("linux/arm64={}", arm64.address)])
        .args([
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &app,
            "--push",
        ])
        .arg("--metadata-file")
        .arg(&metadata)
        .arg(context.path())
        .output()
        .unwrap();
    let progress = ok(&out);
    assert!(
        progress.contains(&format!("linux/arm64 built on {}", arm64.address)),
        "{progress}"
    );
    assert!(
        progress.contains(&format!("linux/amd64 built on {}", amd64.address)),
        "{progress}"
    );
    assert!(
        progress.contains("[linux/arm64 2/2] RUN uname -m > /arch"),
        "{progress}"
    );

    let raw = run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{app}")),
        true,
    )
    .stdout;
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"], "{index}");
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(
        metadata["containerimage.digest"].as_str().unwrap(),
        sha256_of(&raw)
    );
    let arm = run(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--override-arch", "arm64"])
            .arg(format!("docker://{app}")),
        true,
    )
    .stdout;
    let arm: serde_json::Value = serde_json::from_slice(&arm).unwrap();
    assert_eq!(arm["Architecture"], "arm64");

    // Without a registry to assemble in, it says what to do.
    let out = kiln()
        .args(["build", "--builder", &amd64.address])
        .args(["--node", &format!("linux/arm64={}", arm64.address)])
        .args(["--platform", "linux/amd64,linux/arm64"])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("use -t NAME --push"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sha256:…` of `bytes`.
fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
