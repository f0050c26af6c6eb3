//! `build`: `kiln build` end to end through the real binary, on a busybox base image that
//! `scripts/make-busybox-image` makes (needs umoci, skopeo and busybox-static, as the tests).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::report;

/// The two-stage Dockerfile of the integration tests: 9 steps, three of them RUN.
const APP: &str = include_str!("../../tests/fixtures/app.Dockerfile");

/// Files in the large context of the checksum-cache figure, and bytes per file.
const MANY_FILES: usize = 5_000;
const FILE_SIZE: usize = 4_096;

/// Runs the build benchmarks with the `kiln` binary `kiln`.
pub fn bench_build(kiln: &Path, runs: usize) {
    let work = tempfile::tempdir().expect("temporary directory");
    let root = work.path().join("state");
    let base = work.path().join("base");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image");
    let made = Command::new(&script).arg(&base).status();
    if !made.is_ok_and(|s| s.success()) {
        println!(
            "(skipped build: {} failed; it needs umoci, skopeo and busybox-static)",
            script.display()
        );
        return;
    }
    run(Command::new(kiln)
        .arg("--root")
        .arg(&root)
        .args(["load", "-i"])
        .arg(base.join("oci.tar")));

    let app = work.path().join("app");
    write(&app.join("Dockerfile"), APP);
    write(&app.join("src/a.txt"), "alpha\n");
    write(&app.join("src/b.txt"), "beta\n");
    write(&app.join("config.ini"), "[app]\n");
    let build = |extra: &[&str], context: &Path| {
        let mut command = Command::new(kiln);
        command
            .arg("--root")
            .arg(&root)
            .args(["build", "--progress", "quiet", "-t", "bench:1"])
            .args(extra)
            .arg(context);
        run(&mut command);
    };
    build(&[], &app);
    report("build 9 steps, --no-cache (embedded runtime)", runs, || {
        build(&["--no-cache"], &app);
    });
    report("build 9 steps, --no-cache (runc)", runs, || {
        build(&["--no-cache", "--oci-runtime", "runc"], &app);
    });
    report("rebuild 9 steps, all cached", runs, || build(&[], &app));
    let mut generation = 0;
    report("rebuild after editing the last COPY's file", runs, || {
        generation += 1;
        write(
            &app.join("config.ini"),
            &format!("[app]\nrun={generation}\n"),
        );
        build(&[], &app);
    });

    // A shared cache (`--cache-to type=local`) read by fresh state directories, as CI
    // runners do: every step cached, or one file changed. Each run starts from its own
    // fresh state directory with the base loaded, made before the clock starts.
    let cache = work.path().join("cache");
    let cache_to = format!("type=local,dest={},mode=max", cache.display());
    build(&["--no-cache", "--cache-to", &cache_to], &app);
    let cache_from = format!("type=local,src={}", cache.display());
    let fresh_states = |tag: &str, count: usize| -> Vec<PathBuf> {
        (0..count)
            .map(|n| {
                let fresh = work.path().join(format!("fresh-{tag}-{n}"));
                run(Command::new(kiln)
                    .arg("--root")
                    .arg(&fresh)
                    .args(["load", "-i"])
                    .arg(base.join("oci.tar")));
                fresh
            })
            .collect()
    };
    let build_in = |fresh: &Path| {
        run(Command::new(kiln)
            .arg("--root")
            .arg(fresh)
            .args(["build", "--progress", "quiet", "--cache-from", &cache_from])
            .arg(&app));
    };
    let mut states = fresh_states("cached", runs);
    report("fresh state, --cache-from, all cached", runs, || {
        build_in(&states.pop().expect("a fresh state per run"));
    });
    generation += 1;
    write(
        &app.join("config.ini"),
        &format!("[app]\nrun={generation}\n"),
    );
    let mut states = fresh_states("changed", runs);
    report("fresh state, --cache-from, one file changed", runs, || {
        build_in(&states.pop().expect("a fresh state per run"));
    });
    let mut states = fresh_states("cold", runs);
    report("fresh state, no cache (for comparison)", runs, || {
        let fresh = states.pop().expect("a fresh state per run");
        run(Command::new(kiln)
            .arg("--root")
            .arg(&fresh)
            .args(["build", "--progress", "quiet"])
            .arg(&app));
    });

    // What one RUN step costs (container start and exit, commit, cache record): the
    // difference between 21 `RUN true` steps and one, per step.
    let steps = work.path().join("steps");
    write(&steps.join("one.Dockerfile"), "FROM busybox:1\nRUN true\n");
    write(
        &steps.join("many.Dockerfile"),
        &format!("FROM busybox:1\n{}", "RUN true\n".repeat(21)),
    );
    let file = |name: &str| steps.join(name).to_string_lossy().into_owned();
    let one = report("build 1 RUN step, --no-cache", runs, || {
        build(&["--no-cache", "-f", &file("one.Dockerfile")], &steps);
    });
    let many_steps = report("build 21 RUN steps, --no-cache", runs, || {
        build(&["--no-cache", "-f", &file("many.Dockerfile")], &steps);
    });
    println!(
        "  each further RUN step                      {:>7.2} ms",
        (many_steps.saturating_sub(one)).as_secs_f64() * 1e3 / 20.0
    );

    // Two platforms whose only RUN is in a `$BUILDPLATFORM` stage: that stage is shared,
    // so the second platform adds its COPY steps and its export only. (The base is
    // amd64-only, so the arm64 image gets a warning; nothing of it runs.)
    let cross = work.path().join("cross");
    write(
        &cross.join("Dockerfile"),
        "FROM --platform=$BUILDPLATFORM busybox:1 AS build\n\
         RUN mkdir /out && for i in $(seq 1 500); do echo $i > /out/$i; done\n\
         FROM busybox:1\nCOPY --from=build /out /out\nCOPY . /src\n",
    );
    for i in 0..200 {
        write(&cross.join(format!("src/f{i}")), &"y".repeat(FILE_SIZE));
    }
    let one_platform = report(
        "build with a $BUILDPLATFORM stage, --no-cache",
        runs,
        || {
            build(&["--no-cache", "--platform", "linux/amd64"], &cross);
        },
    );
    let two_platforms = report("  same, --platform linux/amd64,linux/arm64", runs, || {
        build(
            &["--no-cache", "--platform", "linux/amd64,linux/arm64"],
            &cross,
        );
    });
    println!(
        "  two platforms / one                        {:>7.2}x",
        two_platforms.as_secs_f64() / one_platform.as_secs_f64()
    );

    let many = work.path().join("many");
    write(&many.join("Dockerfile"), "FROM busybox:1\nCOPY . /app/\n");
    let content = "x".repeat(FILE_SIZE);
    for i in 0..MANY_FILES {
        write(&many.join(format!("d{}/f{i}", i % 50)), &content);
    }
    // Files are remembered once they are over a second old.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build(&[], &many);
    report(
        &format!("rebuild, cached, context of {MANY_FILES} files"),
        runs,
        || build(&[], &many),
    );
    let checksums = root.join("checksums.redb");
    report("  same, checksum cache dropped each time", runs, || {
        let _ = std::fs::remove_file(&checksums);
        build(&[], &many);
    });
}

fn write(path: &PathBuf, content: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directory");
    std::fs::write(path, content).expect("write file");
}

fn run(command: &mut Command) {
    let out = command.output().expect("run kiln");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
