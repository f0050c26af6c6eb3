//! What a new user meets first: mistakes on the command line and unreachable bases get
//! one clear line naming the cause, before any step runs.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use kiln_tests::{kiln, load_into, run};

fn failure(args: &[&str], context: &std::path::Path) -> String {
    let root = tempfile::tempdir().unwrap();
    let out = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .arg("build")
            .args(args)
            .arg(context),
        false,
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn command_line_mistakes_fail_before_the_build() {
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();

    let missing = context.path().join("nowhere");
    let stderr = failure(&[], &missing);
    assert!(
        stderr.contains(&format!(
            "unable to prepare context: path \"{}\" not found",
            missing.display()
        )),
        "{stderr}"
    );

    let stderr = failure(&["-t", "Bad:Tag!"], context.path());
    assert!(stderr.contains("invalid tag \"Bad:Tag!\""), "{stderr}");
    assert!(!stderr.contains("#1 "), "no step ran: {stderr}");

    // An unreachable registry is not the Dockerfile's fault.
    fs::write(
        context.path().join("Dockerfile"),
        "FROM registry.invalid/app:1\n",
    )
    .unwrap();
    let stderr = failure(&[], context.path());
    assert!(
        stderr.contains(
            "ERROR: failed to solve: registry.invalid/app:1: failed to resolve source metadata for registry.invalid/app:1: "
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("parse error"), "{stderr}");
}

#[test]
fn without_root_kiln_says_so_in_one_line() {
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = run(
        kiln()
            .arg("--root")
            .arg(root.path().join("state"))
            .arg("build")
            .arg(context.path())
            .uid(65534)
            .gid(65534),
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(
        stderr.contains(&root.path().join("state").display().to_string()),
        "{stderr}"
    );
}

/// A context file rewritten while the build copies it: a build either fails saying so or
/// copies one whole version, and a later build never gets the other version's layer from
/// the cache.
#[test]
fn a_context_file_rewritten_during_the_build_never_poisons_the_cache() {
    let archives = kiln_tests::busybox_archives();
    let root = tempfile::tempdir().unwrap();
    load_into(root.path(), &archives.oci);
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nCOPY data.bin /data.bin\n",
    )
    .unwrap();
    let version = |byte: u8, len: usize| vec![byte; len];
    let (a, b) = (version(b'a', 8 << 20), version(b'b', (8 << 20) + 1));
    let data = context.path().join("data.bin");
    for _ in 0..6 {
        fs::write(&data, &a).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // Each version lands whole (written aside, then renamed over the file), so
                // any copy of one whole version is right; the cache must follow.
                let aside = context.path().join("data.tmp");
                let mut flip = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fs::write(&aside, if flip { &a } else { &b }).unwrap();
                    fs::rename(&aside, &data).unwrap();
                    flip = !flip;
                }
            });
            let out = tempfile::tempdir().unwrap();
            let built = kiln()
                .arg("--root")
                .arg(root.path())
                .args(["build", "-o"])
                .arg(format!("type=local,dest={}", out.path().display()))
                .arg(context.path())
                .output()
                .unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if built.status.success() {
                let copied = fs::read(out.path().join("data.bin")).unwrap();
                assert!(copied == a || copied == b, "a torn copy");
            } else {
                let stderr = String::from_utf8_lossy(&built.stderr);
                assert!(stderr.contains("changed while it was copied"), "{stderr}");
            }
        });
        // Settled on one version: the build must copy exactly it, cached or not.
        for settled in [&a, &b] {
            fs::write(&data, settled).unwrap();
            let out = tempfile::tempdir().unwrap();
            run(
                kiln()
                    .arg("--root")
                    .arg(root.path())
                    .args(["build", "-o"])
                    .arg(format!("type=local,dest={}", out.path().display()))
                    .arg(context.path()),
                true,
            );
            assert!(
                &fs::read(out.path().join("data.bin")).unwrap() == settled,
                "the cache gave the other version"
            );
        }
    }
}

/// A full disk is named as such, with where kiln keeps its data, not a bare "os error 28".
#[test]
fn a_full_disk_is_named_with_the_state_directory() {
    let archives = kiln_tests::busybox_archives();
    let small = tempfile::tempdir().unwrap();
    run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
            .arg(small.path()),
        true,
    );
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(small.path());
    let root = small.path().join("state");
    load_into(&root, &archives.oci);
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nCOPY big.bin /big.bin\n",
    )
    .unwrap();
    fs::write(context.path().join("big.bin"), vec![7u8; 48 << 20]).unwrap();
    let out = run(
        kiln()
            .arg("--root")
            .arg(&root)
            .arg("build")
            .arg(context.path()),
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "hint: the disk is full; kiln keeps its data in {}",
            root.display()
        )),
        "{stderr}"
    );
}
