//! `--build-context NAME=…` as buildx: a directory, an image or a stage stands in for what
//! `FROM NAME` and `COPY --from=NAME` name.

use std::fs;

use kiln_tests::{kiln, run, state_with_busybox};

#[test]
fn named_contexts_replace_images_stages_and_sources() {
    let root = state_with_busybox();
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM alpine:3.20 AS base\n\
         RUN echo never > /never\n\
         FROM busybox:1 AS tools\n\
         RUN echo tool > /tool\n\
         FROM base\n\
         COPY --from=docs /guide.md /docs/\n\
         COPY --from=helper /tool /tool\n\
         RUN cat /docs/guide.md > /read-by-run\n",
    )
    .unwrap();
    let docs = tempfile::tempdir().unwrap();
    fs::write(docs.path().join("guide.md"), "read me\n").unwrap();
    fs::write(docs.path().join("draft.md"), "not yet\n").unwrap();
    fs::write(docs.path().join(".dockerignore"), "draft.md\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let built = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .args(["build", "--progress", "plain"])
            .args(["--build-context", "base=docker-image://busybox:1"])
            .arg("--build-context")
            .arg(format!("docs={}", docs.path().display()))
            .args(["--build-context", "helper=target:tools"])
            .arg("-o")
            .arg(format!("type=local,dest={}", out.path().display()))
            .arg(context.path()),
        true,
    );
    let read = |name: &str| fs::read_to_string(out.path().join(name)).unwrap();
    assert_eq!(read("docs/guide.md"), "read me\n");
    assert_eq!(read("read-by-run"), "read me\n");
    assert_eq!(read("tool"), "tool\n");
    assert!(
        !out.path().join("never").exists(),
        "the stage named base was replaced"
    );
    assert!(out.path().join("bin/busybox").exists(), "base is busybox:1");
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(stderr.contains("[context base] busybox:1"), "{stderr}");

    // A .dockerignore in the directory applies to it.
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nCOPY --from=docs /draft.md /\n",
    )
    .unwrap();
    let failed = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .arg("build")
            .arg("--build-context")
            .arg(format!("docs={}", docs.path().display()))
            .arg(context.path()),
        false,
    );
    assert!(String::from_utf8_lossy(&failed.stderr).contains("\"/draft.md\": not found"));

    // Kinds kiln cannot read yet are named, not ignored.
    let refused = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .args([
                "build",
                "--build-context",
                "src=https://example.com/repo.git",
            ])
            .arg(context.path()),
        false,
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("does not read this kind of build context"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
