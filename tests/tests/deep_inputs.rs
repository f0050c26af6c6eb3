//! Inputs deep enough to overflow a naive recursion: they build, or fail with a message,
//! never with a crash.

use std::fs;
use std::process::Command;

use kiln_tests::{kiln, run, state_with_busybox};

#[test]
fn deep_archives_chains_and_nesting_never_crash() {
    let root = state_with_busybox();
    let context = tempfile::tempdir().unwrap();
    let build = |dockerfile: &str, ok: bool| {
        fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        let out = tempfile::tempdir().unwrap();
        let output = run(
            kiln()
                .arg("--root")
                .arg(root.path())
                .arg("build")
                .arg("-o")
                .arg(format!("type=local,dest={}", out.path().display()))
                .arg(context.path()),
            ok,
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !stderr.contains("overflow") && !stderr.contains("panicked"),
            "{stderr}"
        );
        (out, stderr)
    };

    // A tar a thousand directories deep, made by GNU tar.
    let tree = tempfile::tempdir().unwrap();
    let deep = (0..1000).map(|_| "d").collect::<Vec<_>>().join("/");
    fs::create_dir_all(tree.path().join(&deep)).unwrap();
    fs::write(tree.path().join(&deep).join("f"), "deep\n").unwrap();
    run(
        Command::new("tar")
            .arg("-C")
            .arg(tree.path())
            .arg("-cf")
            .arg(context.path().join("deep.tar"))
            .arg("d"),
        true,
    );
    let (out, _) = build("FROM busybox:1\nADD deep.tar /x/\n", true);
    assert_eq!(
        fs::read_to_string(out.path().join("x").join(&deep).join("f")).unwrap(),
        "deep\n"
    );

    // Three thousand stages, each built on the one before.
    let mut chain = String::from("FROM scratch AS s0\nCOPY Dockerfile /\n");
    for i in 1..3000 {
        chain.push_str(&format!("FROM s{} AS s{i}\n", i - 1));
    }
    let (out, _) = build(&chain, true);
    assert!(out.path().join("Dockerfile").exists());

    // Ten thousand nested ONBUILDs: refused as BuildKit refuses two.
    let nested = format!("FROM busybox:1\n{}RUN true\n", "ONBUILD ".repeat(10_000));
    let (_, stderr) = build(&nested, false);
    assert!(
        stderr.contains("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        "{stderr}"
    );
}
