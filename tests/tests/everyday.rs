//! What a new user meets first: mistakes on the command line and unreachable bases get
//! one clear line naming the cause, before any step runs.

use std::fs;
use std::os::unix::process::CommandExt as _;

use kiln_tests::{kiln, run};

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
