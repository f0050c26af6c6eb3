//! `corpus`: the shared benchmark corpus (`../shared/bench`: 5,000 files, 51 MB, two
//! stages) and a corpus of many small steps (40 RUN steps in 8 independent stages), built
//! through the real `kiln` binary: cold, no-op rebuild, one file changed and an OCI
//! export, with the peak RSS of each run. The targets of issue 5 are printed beside the
//! medians.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What one measured run took.
pub struct Sample {
    pub wall: Duration,
    /// Peak resident set of kiln and its children, in KiB (`None` where not measured).
    pub peak_rss_kib: Option<u64>,
}

/// Runs `command`, which must succeed, and times it. The page cache is written back
/// first (untimed, as `hyperfine --prepare sync` would), so that one run does not pay for
/// the disk writes of the run before it.
pub fn timed(command: &mut Command) -> (Duration, std::process::Output) {
    rustix::fs::sync();
    let started = std::time::Instant::now();
    let out = command.output().expect("run the benchmarked command");
    let wall = started.elapsed();
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (wall, out)
}

/// Runs `kiln ARGS` under this binary's `peak-rss` wrapper and measures it.
fn measure(kiln: &Path, args: &[&str]) -> Sample {
    let (wall, out) = timed(
        Command::new(std::env::current_exe().expect("kiln-bench path"))
            .arg(crate::PEAK_RSS_COMMAND)
            .arg(kiln)
            .args(args),
    );
    let peak_rss_kib = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok());
    Sample { wall, peak_rss_kib }
}

/// Prints one row: median, min, max, the largest peak RSS, and the target.
pub fn row(name: &str, mut samples: Vec<Sample>, target: &str, extra: &str) {
    samples.sort_by_key(|s| s.wall);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let rss = samples
        .iter()
        .filter_map(|s| s.peak_rss_kib)
        .max()
        .map_or("-".to_string(), |kib| format!("{} MB", kib / 1024));
    println!(
        "{name:<36} {:>9} {:>9} {:>9} {rss:>11}  {target:<10} {extra}",
        ms(samples[samples.len() / 2].wall),
        ms(samples[0].wall),
        ms(samples[samples.len() - 1].wall),
    );
}

/// The median wall time of `samples`.
fn median_wall(samples: &[Sample]) -> Duration {
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    walls.sort();
    walls[walls.len() / 2]
}

/// The bytes of layer data in the OCI archive at `path`, uncompressed: every gzip blob
/// in it decompressed and counted.
fn uncompressed_layer_bytes(path: &Path) -> u64 {
    let file = std::fs::File::open(path).expect("exported archive");
    let mut archive = tar::Archive::new(file);
    let mut total = 0;
    for entry in archive.entries().expect("exported archive") {
        let mut entry = entry.expect("archive entry");
        let mut magic = [0u8; 2];
        if entry.read_exact(&mut magic).is_err() || magic != [0x1f, 0x8b] {
            continue;
        }
        let mut gzip = flate2::read::MultiGzDecoder::new(std::io::Read::chain(&magic[..], entry));
        total += std::io::copy(&mut gzip, &mut std::io::sink()).expect("gzip layer");
    }
    total
}

/// A Dockerfile of `stages` independent stages of `steps` RUN steps each, and a final stage
/// that copies one file from each.
fn many_steps_dockerfile(stages: usize, steps: usize) -> String {
    let mut text = String::new();
    for stage in 0..stages {
        text.push_str(&format!("FROM busybox:local AS s{stage}\n"));
        for step in 0..steps {
            text.push_str(&format!(
                "RUN echo {stage}-{step} > /step{step} && cat /step{step}\n"
            ));
        }
    }
    text.push_str("FROM busybox:local\n");
    for stage in 0..stages {
        text.push_str(&format!("COPY --from=s{stage} /step0 /s{stage}\n"));
    }
    text
}

/// Runs the corpus benchmarks with `kiln`, `runs` times each, and with the dockerd at
/// `docker` too if given.
/// The corpus, ready to build: a busybox base image's archives and the generated context
/// (with its Dockerfile), in a temporary directory.
pub struct Corpus {
    /// Holds everything; deleted on drop.
    pub work: tempfile::TempDir,
    /// `oci.tar` and `docker.tar` of the base image `busybox:local`.
    pub base: PathBuf,
    /// The 5,000-file context.
    pub context: PathBuf,
}

/// Makes the base image and generates the corpus; `None` (after saying why) when the
/// tools for that are missing.
pub fn prepare() -> Option<Corpus> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench");
    let work = tempfile::tempdir().expect("temporary directory");
    let base = work.path().join("base");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image");
    let made = Command::new(&script)
        .arg(&base)
        .arg("busybox:local")
        .status();
    let context = work.path().join("context");
    let generated = Command::new("python3")
        .arg(shared.join("gen-context.py"))
        .arg(&context)
        .stdout(std::process::Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) || !generated.is_ok_and(|s| s.success()) {
        println!(
            "(skipped: the corpus needs {} with umoci, skopeo, busybox-static, and python3 for {})",
            script.display(),
            shared.join("gen-context.py").display()
        );
        return None;
    }
    std::fs::copy(shared.join("Dockerfile"), context.join("Dockerfile")).expect("Dockerfile");
    Some(Corpus {
        work,
        base,
        context,
    })
}

/// Issue 5's corpus table (see the module's doc).
pub fn bench_corpus(kiln: &Path, runs: usize, docker: Option<&str>) {
    let Some(Corpus {
        work,
        base,
        context,
    }) = prepare()
    else {
        return;
    };

    let stages = work.path().join("stages");
    std::fs::create_dir_all(&stages).expect("stages context");
    std::fs::write(stages.join("Dockerfile"), many_steps_dockerfile(8, 5)).expect("Dockerfile");

    // A new state directory per cold run, deleted only at the end: on ext4 without a
    // journal (this machine's disk), inode allocation skips inodes freed in the last
    // minutes, and deleting a state directory mid-run slowed the COPY of the next one
    // fourfold.
    let fresh_root = |name: &str, n: usize| -> PathBuf {
        let root = work.path().join(format!("{name}-{n}"));
        let loaded = Command::new(kiln)
            .arg("--root")
            .arg(&root)
            .args(["load", "-i"])
            .arg(base.join("oci.tar"))
            .output()
            .expect("kiln load");
        assert!(loaded.status.success(), "kiln load failed");
        root
    };
    let build = |root: &Path, context: &Path, extra: &[&str]| {
        let root = root.to_str().expect("UTF-8 path");
        let context = context.to_str().expect("UTF-8 path");
        let mut args = vec![
            "--root",
            root,
            "build",
            "--progress",
            "quiet",
            "-t",
            "bench:1",
        ];
        args.extend_from_slice(extra);
        args.push(context);
        measure(kiln, &args)
    };

    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>11}  {:<10}",
        "corpus build (5,000 files, 51 MB)", "median", "min", "max", "peak RSS", "target"
    );
    let cold: Vec<Sample> = (0..runs)
        .map(|n| build(&fresh_root("state", n), &context, &[]))
        .collect();
    row("cold (fresh state, base loaded)", cold, "≤ 1500 ms", "");
    let root = work.path().join(format!("state-{}", runs - 1));
    let noop: Vec<Sample> = (0..runs).map(|_| build(&root, &context, &[])).collect();
    row("no-op rebuild", noop, "≤ 60 ms", "");
    // Each cold-build state exports once: the first export compresses every layer.
    let archive = work.path().join("export.tar");
    let output = format!("type=oci,dest={}", archive.display());
    let export: Vec<Sample> = (0..runs)
        .map(|n| {
            build(
                &work.path().join(format!("state-{n}")),
                &context,
                &["-o", &output],
            )
        })
        .collect();
    let layer_bytes = uncompressed_layer_bytes(&archive);
    let median = median_wall(&export);
    row(
        "first --output type=oci (cached build)",
        export,
        "",
        &format!(
            "{:.0} MB of layers at {:.0} MB/s",
            layer_bytes as f64 / 1e6,
            layer_bytes as f64 / 1e6 / median.as_secs_f64()
        ),
    );
    let again: Vec<Sample> = (0..runs)
        .map(|_| build(&root, &context, &["-o", &output]))
        .collect();
    row(
        "  the same export again",
        again,
        "",
        "compressed layers remembered",
    );
    let changed_file = context.join("d025/f02501.txt");
    let one_file: Vec<Sample> = (0..runs)
        .map(|n| {
            append_line(&changed_file, &format!("appended line {n}"));
            build(&root, &context, &[])
        })
        .collect();
    row("one file changed", one_file, "≤ 1000 ms", "");
    let stage_runs: Vec<Sample> = (0..runs)
        .map(|n| build(&fresh_root("stages", n), &stages, &[]))
        .collect();
    row("40 RUN steps in 8 stages, cold", stage_runs, "", "");
    if let Some(host) = docker {
        bench_docker(host, runs, &base.join("docker.tar"), &context);
    }
}

/// Debian's docker.io client: its `docker build` drives the daemon's BuildKit (v0.8) itself,
/// where newer clients want the buildx plugin.
const DOCKER_CLIENT: &str = "/usr/bin/docker";

/// Times `DOCKER_BUILDKIT=1 docker build` of the corpus at `context` with the dockerd at
/// `host`, the busybox image loaded from `base_archive`: cold (after `docker builder prune
/// -af`), no-op, and one file changed. Peak RSS is not comparable (the work happens in
/// dockerd) and is left out.
fn bench_docker(host: &str, runs: usize, base_archive: &Path, context: &Path) {
    let docker = |args: &[&str]| {
        let mut command = Command::new(DOCKER_CLIENT);
        command
            .args(["-H", host])
            .args(args)
            .env("DOCKER_BUILDKIT", "1");
        command
    };
    let loaded = docker(&["load", "-i"]).arg(base_archive).output();
    if !loaded.is_ok_and(|o| o.status.success()) {
        println!("(skipped docker: cannot load the base image into the dockerd at {host})");
        return;
    }
    // The dockerd that scripts/bench-docker starts has no bridge network.
    let build = || Sample {
        wall: timed(
            docker(&["build", "--network", "host", "-q", "-t", "bench:docker"]).arg(context),
        )
        .0,
        peak_rss_kib: None,
    };
    println!(
        "{:<36} (DOCKER_BUILDKIT=1 docker build, same corpus)",
        "docker"
    );
    let cold: Vec<Sample> = (0..runs)
        .map(|_| {
            let pruned = docker(&["builder", "prune", "-af"]).output();
            assert!(
                pruned.is_ok_and(|o| o.status.success()),
                "docker builder prune"
            );
            build()
        })
        .collect();
    row("cold (after docker builder prune -af)", cold, "", "");
    let noop: Vec<Sample> = (0..runs).map(|_| build()).collect();
    row("no-op rebuild", noop, "", "");
    let changed_file = context.join("d025/f02501.txt");
    let one_file: Vec<Sample> = (0..runs)
        .map(|n| {
            append_line(&changed_file, &format!("docker line {n}"));
            build()
        })
        .collect();
    row("one file changed", one_file, "", "");
}

/// Appends `line` to the corpus file at `path`.
pub fn append_line(path: &Path, line: &str) {
    let mut text = std::fs::read_to_string(path).expect("corpus file");
    text.push_str(line);
    text.push('\n');
    std::fs::write(path, text).expect("corpus file");
}
