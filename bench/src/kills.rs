//! `kills`: SIGKILL `kiln build` at random moments, `runs` times per runtime, and check
//! after each kill that `kiln check` finds the store whole and the next build makes the
//! right image. Prints how many stores were corrupt and images wrong (both must be 0).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::report;

/// Steps that cover every phase a kill can land in: unpacking the base, COPY, RUN, a
/// cache mount, commit and export.
const DOCKERFILE: &str = "FROM busybox:1\n\
    COPY src/ /src/\n\
    RUN sleep 0.2 && cat /src/a.txt > /out\n\
    RUN --mount=type=cache,target=/cache echo more >> /out && echo x >> /cache/log\n\
    COPY b.txt /b.txt\n";

/// Runs the kill rounds with the `kiln` binary `kiln`, `runs` per runtime.
pub fn bench_kills(kiln: &Path, runs: usize) {
    let work = tempfile::tempdir().expect("temporary directory");
    let base = work.path().join("base");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image");
    if !Command::new(&script)
        .arg(&base)
        .status()
        .is_ok_and(|s| s.success())
    {
        println!("(skipped kills: {} failed)", script.display());
        return;
    }
    let context = work.path().join("context");
    for (path, text) in [
        ("Dockerfile", DOCKERFILE),
        ("src/a.txt", "alpha\n"),
        ("b.txt", "beta\n"),
    ] {
        let path = context.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directory");
        std::fs::write(path, text).expect("write file");
    }
    for (runtime, extra) in [
        ("embedded runtime", &[][..]),
        ("runc", &["--oci-runtime", "runc"][..]),
    ] {
        let root = work
            .path()
            .join(format!("state-{}", runtime.replace(' ', "-")));
        let kiln_in = || {
            let mut command = Command::new(kiln);
            command.arg("--root").arg(&root);
            command
        };
        let loaded = kiln_in()
            .args(["load", "-i"])
            .arg(base.join("oci.tar"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(loaded, "cannot load the base image");
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()));
        let (mut corrupt, mut wrong) = (0, 0);
        report(&format!("kill, then rebuild ({runtime})"), runs, || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let delay = Duration::from_millis((seed >> 33) % 1500);
            let mut child = kiln_in()
                .args(["build", "--progress", "none", "--no-cache", "-t", "app:1"])
                .args(extra)
                .arg(&context)
                .stderr(Stdio::null())
                .spawn()
                .expect("start kiln build");
            std::thread::sleep(delay);
            let _ = child.kill();
            let _ = child.wait();
            if !kiln_in()
                .arg("check")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                corrupt += 1;
            }
            let out = tempfile::tempdir().expect("temporary directory");
            let built = kiln_in()
                .args(["build", "--progress", "none", "-t", "app:1", "-o"])
                .arg(format!("type=local,dest={}", out.path().display()))
                .args(extra)
                .arg(&context)
                .output()
                .is_ok_and(|o| o.status.success());
            let read = |name: &str| std::fs::read_to_string(out.path().join(name)).ok();
            if !built
                || read("out").as_deref() != Some("alpha\nmore\n")
                || read("b.txt").as_deref() != Some("beta\n")
            {
                wrong += 1;
            }
        });
        println!("  {runs} kills: {corrupt} corrupt stores, {wrong} wrong or failed rebuilds");
    }
}
