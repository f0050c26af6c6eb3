//! `remote`: the corpus through `kiln serve` on a unix socket, beside the same builds
//! run locally: no-op rebuilds (target: remote ≤ 1.5× local), what a one-file change
//! sends, the idle daemon's RSS (≤ 30 MB) and its peak during four concurrent corpus
//! builds (≤ 300 MB).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::corpus::{Corpus, Sample, append_line, prepare, row, timed};

/// A `kiln serve` for the benchmark, killed on drop.
struct Daemon {
    child: Child,
    address: String,
}

impl Daemon {
    fn start(kiln: &Path, root: &Path, socket: &Path) -> Daemon {
        let address = format!("unix://{}", socket.display());
        let child = Command::new(kiln)
            .arg("--root")
            .arg(root)
            .args(["serve", "--addr", &address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kiln serve");
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "kiln serve did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, address }
    }

    /// The daemon's current and peak resident set, in KiB (`VmRSS`, `VmHWM`).
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(kiln: &Path, root: &Path, base: &Path) {
    let loaded = Command::new(kiln)
        .arg("--root")
        .arg(root)
        .args(["load", "-i"])
        .arg(base.join("oci.tar"))
        .output()
        .expect("kiln load");
    assert!(loaded.status.success(), "kiln load failed");
}

/// `kiln build` of `context`, locally in `root` or through `builder`.
fn build(kiln: &Path, target: &Target<'_>, context: &Path, extra: &[&str]) -> (Duration, String) {
    let mut command = Command::new(kiln);
    match target {
        Target::Local(root) => command.arg("--root").arg(root).arg("build"),
        Target::Remote(address) => command.args(["build", "--builder", address]),
    };
    let (wall, out) = timed(
        command
            .args(["--progress", "plain"])
            .args(extra)
            .arg(context),
    );
    (wall, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Where a build runs.
enum Target<'a> {
    Local(&'a Path),
    Remote(&'a str),
}

fn samples(walls: Vec<Duration>) -> Vec<Sample> {
    walls
        .into_iter()
        .map(|wall| Sample {
            wall,
            peak_rss_kib: None,
        })
        .collect()
}

/// The remote builder's figures (see the module's doc).
pub fn bench_remote(kiln: &Path, runs: usize) {
    let Some(Corpus {
        work,
        base,
        context,
    }) = prepare()
    else {
        return;
    };
    let local_root = work.path().join("local");
    load(kiln, &local_root, &base);
    let remote_root = work.path().join("remote");
    load(kiln, &remote_root, &base);
    let daemon = Daemon::start(kiln, &remote_root, &work.path().join("kiln.sock"));
    std::thread::sleep(Duration::from_millis(200));
    let (idle_rss, _) = daemon.rss_kib();
    let local = Target::Local(&local_root);
    let remote = Target::Remote(&daemon.address);

    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>11}  {:<10}",
        "remote builder (corpus, unix socket)", "median", "min", "max", "", "target"
    );
    build(kiln, &local, &context, &[]);
    build(kiln, &remote, &context, &[]);
    let local_noop: Vec<Duration> = (0..runs)
        .map(|_| build(kiln, &local, &context, &[]).0)
        .collect();
    let remote_noop: Vec<Duration> = (0..runs)
        .map(|_| build(kiln, &remote, &context, &[]).0)
        .collect();
    let median = |walls: &[Duration]| {
        let mut sorted = walls.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    let ratio = median(&remote_noop).as_secs_f64() / median(&local_noop).as_secs_f64();
    row("no-op rebuild, local", samples(local_noop), "", "");
    row(
        "no-op rebuild, remote",
        samples(remote_noop),
        "≤ 1.5× local",
        &format!("{ratio:.2}× local"),
    );

    let changed = context.join("d025/f02501.txt");
    let mut sent = String::new();
    let one_file: Vec<Duration> = (0..runs)
        .map(|n| {
            append_line(&changed, &format!("remote line {n}"));
            let (wall, progress) = build(kiln, &remote, &context, &[]);
            sent = progress
                .lines()
                .find(|l| l.contains("transferring context:"))
                .map(|l| l.trim_start_matches("=> ").to_string())
                .unwrap_or_default();
            wall
        })
        .collect();
    row("one file changed, remote", samples(one_file), "", &sent);

    // Four clients with contexts of their own (each synced once), no cache.
    let contexts: Vec<PathBuf> = (0..4)
        .map(|n| {
            let copy = work.path().join(format!("client-{n}"));
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&context)
                .arg(&copy)
                .status()
                .expect("cp");
            assert!(copied.success(), "cannot copy the corpus");
            copy
        })
        .collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for copy in &contexts {
            let remote = Target::Remote(&daemon.address);
            scope.spawn(move || build(kiln, &remote, copy, &["--no-cache"]));
        }
    });
    let four = started.elapsed();
    let (_, peak_rss) = daemon.rss_kib();
    println!(
        "{:<36} {:>9}   daemon RSS idle {} MB (target ≤ 30 MB), peak {} MB (target ≤ 300 MB)",
        "four concurrent cold builds, remote",
        format!("{:.0} ms", four.as_secs_f64() * 1e3),
        idle_rss / 1024,
        peak_rss / 1024,
    );
}
