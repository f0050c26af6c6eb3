//! kiln's benchmark harness.
//!
//! `cargo run --release -p kiln-bench -- [BENCH…] [--runs N]` runs the named benchmarks (all
//! when none is named) and prints one table row per figure: median, min and max over N runs.
//!
//! Benchmarks:
//! - `parse`: parse a generated 10,000-line Dockerfile in-process (target: < 50 ms), and
//!   end-to-end with `kiln debug parse` when the `kiln` binary sits beside this one.
//! - `build`: `kiln build` of a 9-step two-stage Dockerfile without cache (with the embedded
//!   runtime and with runc), fully cached, and after editing one file; and the cached
//!   rebuild of a 5,000-file context with and without the checksum cache. Needs the `kiln`
//!   binary beside this one and root.
//! - `corpus`: issue 5's table: the shared 5,000-file corpus cold, no-op, one file changed
//!   and exported, and 40 RUN steps in 8 stages, with peak RSS (at least 5 runs). With
//!   `--docker HOST` (a dockerd's address), `DOCKER_BUILDKIT=1 docker build` of the same
//!   corpus is timed beside it; `scripts/bench-docker` sets that up.
//! - `remote`: the corpus through `kiln serve` on a unix socket beside local builds:
//!   no-op rebuilds, what one changed file sends, the daemon's idle and peak RSS during
//!   four concurrent builds.

mod build;
mod corpus;
mod kills;
mod remote;

/// The hidden first argument that makes kiln-bench run a command and print the peak RSS
/// of it and its children (KiB) on its last line of output.
const PEAK_RSS_COMMAND: &str = "__peak-rss";

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let mut all = std::env::args().skip(1);
    if all.next().as_deref() == Some(PEAK_RSS_COMMAND) {
        return peak_rss(all.collect());
    }
    let mut runs = 21;
    let mut docker = None;
    let mut benches = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => runs = n,
                _ => return usage("--runs takes a positive number"),
            },
            "--docker" => match args.next() {
                Some(host) => docker = Some(host),
                None => return usage("--docker takes a dockerd address (unix:///…)"),
            },
            "parse" | "build" | "corpus" | "remote" | "kills" => benches.push(arg),
            "-h" | "--help" => return usage(""),
            other => return usage(&format!("unknown benchmark {other:?}")),
        }
    }
    if benches.is_empty() {
        benches = vec![
            "parse".to_string(),
            "build".to_string(),
            "corpus".to_string(),
            "remote".to_string(),
        ];
    }
    println!(
        "{:<44} {:>10} {:>10} {:>10}  runs",
        "benchmark", "median", "min", "max"
    );
    for bench in benches {
        match bench.as_str() {
            "parse" => bench_parse(runs),
            other => match sibling_kiln() {
                Some(kiln) if other == "build" => build::bench_build(&kiln, runs),
                Some(kiln) if other == "remote" => remote::bench_remote(&kiln, runs.min(5)),
                Some(kiln) if other == "kills" => kills::bench_kills(&kiln, runs),
                // The corpus is slow: 5 runs unless fewer were asked for.
                Some(kiln) => corpus::bench_corpus(&kiln, runs.min(5), docker.as_deref()),
                None => println!("(skipped {other}: no kiln binary beside kiln-bench)"),
            },
        }
    }
    ExitCode::SUCCESS
}

/// Runs `command` and prints the peak RSS (KiB) of it and every descendant it waited for.
fn peak_rss(command: Vec<String>) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        return usage("nothing to measure");
    };
    let status = match Command::new(program).args(args).status() {
        Ok(status) => status,
        Err(err) => return usage(&format!("cannot run {program}: {err}")),
    };
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    println!("{}", usage.map_or(0, |u| u.max_rss()));
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage(problem: &str) -> ExitCode {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: kiln-bench [parse] [build] [corpus] [remote] [kills] [--runs N] [--docker HOST]\n\
         (kills is not run by default: `kiln-bench kills --runs 100` kills 100 builds per runtime)"
    );
    if problem.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// Times `f` `runs` times and prints median, min and max.
fn report(name: &str, runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    println!(
        "{name:<44} {:>10} {:>10} {:>10}  {runs}",
        ms(times[runs / 2]),
        ms(times[0]),
        ms(times[runs - 1])
    );
    times[runs / 2]
}

/// A Dockerfile of exactly `lines` lines mixing every construct the parser handles:
/// continuations, comments, heredocs, JSON and shell forms, flags, ENV/LABEL pairs.
fn generated_dockerfile(lines: usize) -> String {
    const BLOCK: &[&str] = &[
        "# a comment about the next stage",
        "FROM {base} AS s{n}",
        "ARG VERSION=1.2.3",
        "ENV PATH=/usr/local/bin:$PATH APP_HOME=\"/srv/app dir\" MODE=prod",
        "LABEL org.opencontainers.image.version=\"${VERSION}\" maintainer=kiln",
        "WORKDIR /srv/app",
        "COPY --chown=1000:1000 --chmod=0644 src/ ./src/",
        "RUN --mount=type=cache,target=/var/cache/apk apk add --no-cache \\",
        "      curl \\",
        "      git",
        "RUN <<EOF",
        "set -e",
        "echo building $VERSION > /version",
        "EOF",
        "COPY <<conf /etc/app.conf",
        "listen = 8080",
        "conf",
        "HEALTHCHECK --interval=30s --timeout=3s CMD [\"wget\", \"-q\", \"localhost:8080\"]",
        "EXPOSE 8080/tcp",
        "CMD [\"/srv/app/run\", \"--port\", \"8080\"]",
    ];
    let mut out = String::new();
    for i in 0..lines {
        // Each stage builds on the previous one, so lowering the last reaches every stage.
        let n = i / BLOCK.len();
        let base = if n == 0 {
            "busybox:1.36".to_string()
        } else {
            format!("s{}", n - 1)
        };
        let line = BLOCK[i % BLOCK.len()]
            .replace("{base}", &base)
            .replace("{n}", &n.to_string());
        out.push_str(&line);
        out.push('\n');
    }
    // Do not end inside a continuation or heredoc.
    let tail = lines % BLOCK.len();
    if (8..10).contains(&tail) {
        out.push_str("      done\n");
    } else if (11..14).contains(&tail) {
        out.push_str("EOF\n");
    } else if (15..17).contains(&tail) {
        out.push_str("conf\n");
    }
    out
}

fn bench_parse(runs: usize) {
    let source = generated_dockerfile(10_000);
    let nodes = kiln_frontend::parser::parse(source.as_bytes())
        .expect("benchmark Dockerfile parses")
        .nodes
        .len();
    report(
        &format!("parse 10,000 lines ({nodes} instructions)"),
        runs,
        || {
            let doc = kiln_frontend::parser::parse(source.as_bytes()).unwrap();
            std::hint::black_box(doc);
        },
    );

    let options = kiln_frontend::lower::BuildOptions::default();
    let lower_all = || {
        let doc = kiln_frontend::parser::parse(source.as_bytes()).unwrap();
        let stages = kiln_frontend::instructions::Dockerfile::from_document(&doc)
            .expect("benchmark Dockerfile types");
        kiln_frontend::lower::lower(&stages, &options, &kiln_frontend::lower::EmptyConfigs)
            .expect("benchmark Dockerfile lowers")
    };
    let vertices = lower_all().definition.len();
    report(
        &format!("parse + lower 10,000 lines ({vertices} vertices)"),
        runs,
        || {
            std::hint::black_box(lower_all());
        },
    );

    let Some(kiln) = sibling_kiln() else {
        println!(
            "(skipped `kiln debug parse`: no kiln binary beside kiln-bench; build it with cargo build --release -p kiln)"
        );
        return;
    };
    let path = std::env::temp_dir().join(format!("kiln-bench-{}.Dockerfile", std::process::id()));
    std::fs::write(&path, &source).expect("write benchmark Dockerfile");
    report("kiln debug parse, 10,000 lines (process)", runs, || {
        let out = Command::new(&kiln)
            .args(["debug", "parse", "-f"])
            .arg(&path)
            .output()
            .expect("run kiln");
        assert!(out.status.success(), "kiln debug parse failed");
    });
    let _ = std::fs::remove_file(path);
}

fn sibling_kiln() -> Option<PathBuf> {
    let bin = std::env::current_exe().ok()?.with_file_name("kiln");
    bin.exists().then_some(bin)
}
