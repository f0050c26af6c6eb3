//! `--build-context NAME=…` as buildx: a directory, an image, an OCI layout's image or a
//! stage stands in for what `FROM NAME` and `COPY --from=NAME` name.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_tests::{busybox_archives, kiln, run, state_with_busybox, untar};
use sha2::{Digest, Sha256};

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

/// Writes `bytes` as a blob of the OCI layout `layout`; returns its digest.
fn add_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// The platform kiln builds for on this machine (`linux/amd64`).
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// An OCI layout made by umoci and skopeo, not kiln: `v1` is busybox:1; `v2` the same with
/// `GREETING=hello` in its Env and `/srv` as WorkingDir; `multi` an image index of `v1`
/// for linux/s390x and `v2` for this machine's platform. Returns the directory (inside
/// `dir`) and the digests of `v1`'s manifest and of the index.
fn busybox_layout(dir: &Path) -> (std::path::PathBuf, String, String) {
    let archives = busybox_archives();
    let layout = dir.join("layout");
    untar(&archives.oci, &layout);
    let read_index = || -> serde_json::Value {
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap()
    };
    let mut index = read_index();
    index["manifests"][0]["annotations"] =
        serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    run(
        Command::new("umoci")
            .args(["config", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .args(["--tag", "v2", "--config.env", "GREETING=hello"])
            .args(["--config.workingdir", "/srv"]),
        true,
    );
    let mut index = read_index();
    let entries = index["manifests"].as_array().unwrap().clone();
    let entry = |n: usize, platform: &str| {
        let (os, architecture) = platform.split_once('/').unwrap();
        let mut entry = entries[n].clone();
        entry.as_object_mut().unwrap().remove("annotations");
        entry["platform"] = serde_json::json!({"os": os, "architecture": architecture});
        entry
    };
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(0, "linux/s390x"), entry(1, &host_platform())],
    })
    .to_string();
    let multi_digest = add_blob(&layout, multi.as_bytes());
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": multi_digest,
            "size": multi.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let v1 = entries[0]["digest"].as_str().unwrap().to_string();
    (layout, v1, multi_digest)
}

#[test]
fn oci_layout_contexts_are_the_images_the_layout_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, v1, multi) = busybox_layout(dir.path());
    // Nothing in the store: every blob comes from the layout.
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    let dockerfile = |text: &str| fs::write(context.path().join("Dockerfile"), text).unwrap();
    let build = |contexts: &[String], expect_success: bool| {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = kiln();
        cmd.arg("--root")
            .arg(root.path())
            .args(["build", "--progress", "plain"]);
        for value in contexts {
            cmd.arg("--build-context").arg(value);
        }
        let done = run(
            cmd.arg("-o")
                .arg(format!("type=local,dest={}", out.path().display()))
                .arg(context.path()),
            expect_success,
        );
        (out, String::from_utf8_lossy(&done.stderr).into_owned())
    };
    let layout = layout.display().to_string();

    // By tag, the image's Env and WorkingDir apply; COPY --from reads another image.
    dockerfile(
        "FROM base\n\
         RUN echo \"$GREETING from $(pwd)\" > greeting\n\
         COPY --from=tools /etc/passwd /copied-passwd\n",
    );
    let (out, stderr) = build(
        &[
            format!("base=oci-layout://{layout}:v2"),
            format!("tools=oci-layout://{layout}:v1"),
        ],
        true,
    );
    assert_eq!(
        fs::read_to_string(out.path().join("srv/greeting")).unwrap(),
        "hello from /srv\n"
    );
    assert!(out.path().join("copied-passwd").is_file());
    assert!(out.path().join("bin/busybox").is_file());
    assert!(
        stderr.contains("[context base] OCI load from client"),
        "{stderr}"
    );

    // By digest (the tag is then ignored), and an index by its tag: this machine's image.
    dockerfile("FROM base\nRUN echo \"[$GREETING]\" > /greeting\n");
    for (value, expected) in [
        (format!("{layout}:v2@{v1}"), "[]\n"),
        (format!("{layout}:multi"), "[hello]\n"),
        (format!("{layout}@{multi}"), "[hello]\n"),
    ] {
        let (out, _) = build(&[format!("base=oci-layout://{value}")], true);
        let greeting = fs::read_to_string(out.path().join("greeting")).unwrap();
        assert_eq!(greeting, expected, "{value}");
    }

    // The imported images have no name.
    let images = run(kiln().arg("--root").arg(root.path()).arg("images"), true);
    let listed = String::from_utf8_lossy(&images.stdout);
    assert_eq!(listed.lines().count(), 1, "only the header: {listed}");

    // What is wrong is said, naming the layout.
    let fails = |value: String, expected: &str| {
        let (_, stderr) = build(&[format!("base=oci-layout://{value}")], false);
        assert!(stderr.contains(expected), "{value}: {stderr}");
    };
    fails(
        format!("{layout}:v3"),
        &format!("{layout}: no image in the OCI layout is tagged \"v3\" (its tags: v1, v2, multi)"),
    );
    let absent = format!("sha256:{}", "0".repeat(64));
    fails(
        format!("{layout}@{absent}"),
        &format!("{layout}: the OCI layout holds no manifest or index {absent}"),
    );
    let plain = context.path().display().to_string();
    fs::write(context.path().join("oci-layout"), "{}").unwrap();
    fails(
        plain.clone(),
        &format!("{plain} is not an OCI image layout: it has no index.json"),
    );
    dockerfile("FROM --platform=linux/ppc64le base\n");
    fails(
        format!("{layout}:multi"),
        &format!(
            "oci-layout {layout}: image docker.io/library/base@{multi} has no manifest for linux/ppc64le (it has linux/s390x, {})",
            host_platform()
        ),
    );

    // A remote builder cannot read the layout.
    let remote = run(
        kiln()
            .args(["build", "--builder", "tcp://127.0.0.1:9"])
            .arg("--build-context")
            .arg(format!("base=oci-layout://{layout}"))
            .arg(context.path()),
        false,
    );
    let stderr = String::from_utf8_lossy(&remote.stderr);
    assert!(stderr.contains("work for local builds only"), "{stderr}");
}
