//! `kiln debug parse` through the real binary: BuildKit's golden files and error reporting.

use std::fs;

use kiln_tests::{conformance_dir, kiln, run};

#[test]
fn dumps_every_buildkit_testfile() {
    let root = conformance_dir("buildkit-parser/testfiles");
    let mut cases: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 33);
    for case in cases {
        let out = run(
            kiln()
                .args(["debug", "parse", "-f"])
                .arg(case.join("Dockerfile")),
            true,
        );
        let expected = fs::read_to_string(case.join("result")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{}",
            case.display()
        );
    }
}

#[test]
fn negative_cases_fail_with_a_located_error() {
    let root = conformance_dir("buildkit-parser/testfiles-negative");
    for name in [
        "empty_dockerfile",
        "only_comments",
        "env_no_value",
        "shykes-nested-json",
    ] {
        let out = run(
            kiln()
                .args(["debug", "parse", "-f"])
                .arg(root.join(name).join("Dockerfile")),
            false,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("ERROR: dockerfile parse error on line"),
            "{name}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name} printed a dump");
    }
}

#[test]
fn errors_show_a_snippet_of_the_offending_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Dockerfile");
    fs::write(&file, "FROM busybox\nENV A=1 \\\n    B\nRUN true\n").unwrap();
    let out = run(kiln().args(["debug", "parse", "-f"]).arg(&file), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("Dockerfile:2-3\n"), "{stderr}");
    assert!(
        stderr.contains("   2 | >>> ENV A=1 \\\n   3 | >>>     B\n"),
        "{stderr}"
    );
    assert!(stderr.contains("can't find = in \"B\""), "{stderr}");
}

#[test]
fn missing_dockerfile_is_a_clear_error() {
    let out = run(
        kiln().args(["debug", "parse", "-f", "/nonexistent/Dockerfile"]),
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read Dockerfile /nonexistent/Dockerfile"),
        "{stderr}"
    );
}

#[test]
fn reads_standard_input() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = kiln()
        .args(["debug", "parse", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from a\nrun <<EOF\nbody\nEOF\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "(from \"a\")\n(run \"<<EOF\")\n"
    );
}
