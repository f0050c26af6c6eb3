//! `kiln debug graph` through the real binary: shared vertices, `--target` pruning, digest
//! stability, build args, platforms and errors.

use std::collections::BTreeMap;
use std::fs;

use kiln_tests::{kiln, run};
use serde_json::Value;

const DOCKERFILE: &str = "\
ARG BASE=busybox
FROM $BASE AS deps
RUN echo fetch deps

FROM $BASE AS tools
RUN echo fetch deps
RUN echo build tools

FROM $BASE AS docs
RUN echo docs only

FROM deps AS app
COPY --from=tools /tools /usr/local/bin/
ARG VERSION=dev
RUN echo building $VERSION
";

/// Runs `kiln debug graph` on `dockerfile` with extra args; returns the JSON.
fn graph(dockerfile: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    fs::write(&path, dockerfile).unwrap();
    let out = run(
        kiln().args(["debug", "graph", "-f"]).arg(&path).args(extra),
        true,
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// description → digest of every vertex.
fn by_description(g: &Value) -> BTreeMap<String, String> {
    g["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["description"].as_str().unwrap().to_string(),
                v["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn descriptions(g: &Value) -> Vec<String> {
    by_description(g).into_keys().collect()
}

#[test]
fn shared_steps_are_one_vertex_and_unreached_stages_are_pruned() {
    let g = graph(DOCKERFILE, &[]);
    let vertices = g["vertices"].as_array().unwrap();
    let runs_of = |cmd: &str| {
        vertices
            .iter()
            .filter(|v| {
                v["op"]["args"]
                    .as_array()
                    .is_some_and(|a| a.last().unwrap() == cmd)
            })
            .count()
    };
    assert_eq!(
        runs_of("echo fetch deps"),
        1,
        "same RUN on the same base in two stages"
    );
    assert_eq!(
        runs_of("echo docs only"),
        0,
        "the docs stage is not reachable from app"
    );
    let images = vertices
        .iter()
        .filter(|v| v["op"]["source"] == "image")
        .count();
    assert_eq!(images, 1);
    // image, fetch deps, build tools, copy, RUN building
    assert_eq!(vertices.len(), 5, "{:#?}", descriptions(&g));
    assert_eq!(g["root"], vertices.last().unwrap()["digest"]);

    let tools = graph(DOCKERFILE, &["--target", "tools"]);
    assert_eq!(tools["vertices"].as_array().unwrap().len(), 3);
    let docs = graph(DOCKERFILE, &["--target", "docs"]);
    assert_eq!(docs["vertices"].as_array().unwrap().len(), 2);
}

#[test]
fn changing_a_run_changes_that_vertex_and_its_dependents_only() {
    let before = by_description(&graph(DOCKERFILE, &[]));
    let after = by_description(&graph(
        &DOCKERFILE.replace("build tools", "build tools v2"),
        &[],
    ));
    let unchanged: Vec<&String> = before
        .iter()
        .filter(|(d, digest)| after.get(*d) == Some(digest))
        .map(|(d, _)| d)
        .collect();
    assert_eq!(
        unchanged,
        ["[deps 1/2] FROM busybox", "[deps 2/2] RUN echo fetch deps"],
        "only the changed RUN, the COPY that reads it and the RUN after it change"
    );
}

#[test]
fn build_args_and_platform_reach_the_ops() {
    let g = graph(
        DOCKERFILE,
        &["--build-arg", "VERSION=1.2", "--platform", "linux/arm64/v8"],
    );
    let last = g["vertices"].as_array().unwrap().last().unwrap().clone();
    let env = last["op"]["env"].as_array().unwrap();
    assert!(env.contains(&Value::from("VERSION=1.2")), "{env:?}");
    assert_eq!(last["op"]["platform"]["architecture"], "arm64");
    assert_eq!(g["image"]["architecture"], "arm64");
    let history = g["image"]["history"].as_array().unwrap();
    assert_eq!(
        history.last().unwrap()["created_by"],
        "RUN |1 VERSION=1.2 /bin/sh -c echo building $VERSION # buildkit"
    );

    let g = graph(DOCKERFILE, &["--build-arg", "BASE=alpine:3.20"]);
    assert!(descriptions(&g).contains(&"[deps 1/2] FROM alpine:3.20".to_string()));
}

#[test]
fn dot_output_is_a_graphviz_digraph() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    fs::write(&path, DOCKERFILE).unwrap();
    let out = run(
        kiln()
            .args(["debug", "graph", "--format", "dot", "-f"])
            .arg(&path),
        true,
    );
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("digraph kiln {"));
    assert_eq!(dot.matches(" -> ").count(), 5, "{dot}");
}

#[test]
fn errors_point_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    for (src, expected) in [
        ("FROM busybox\nCOPY --from=nowhere! a b\n", "Dockerfile:2"),
        (
            "FROM busybox\nRUN --mount=type=cache true\n",
            "mount target is required",
        ),
        (
            "FROM busybox\nRUN --netwrk=none true\n",
            "Unknown flag: netwrk (did you mean network?)",
        ),
    ] {
        fs::write(&path, src).unwrap();
        let out = run(kiln().args(["debug", "graph", "-f"]).arg(&path), false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{src:?}: {err}");
        assert!(err.contains(">>>"), "{err}");
    }
    fs::write(&path, DOCKERFILE).unwrap();
    let out = run(
        kiln()
            .args(["debug", "graph", "--target", "nope", "-f"])
            .arg(&path),
        false,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("target stage \"nope\" could not be found")
    );
}

#[test]
fn a_build_platform_stage_is_one_vertex_for_every_target_platform() {
    let g = graph(
        "FROM --platform=$BUILDPLATFORM busybox AS cross\nRUN echo compile once\n\
         FROM busybox\nCOPY --from=cross /out /out\nRUN echo per platform\n",
        &["--platform", "linux/amd64,linux/arm64", "--format", "json"],
    );
    let names = descriptions(&g);
    let cross: Vec<&String> = names
        .iter()
        .filter(|d| d.contains("RUN echo compile once"))
        .collect();
    assert_eq!(
        cross,
        ["[linux/amd64 cross 2/2] RUN echo compile once"],
        "{names:#?}"
    );
    for platform in ["linux/amd64", "linux/arm64"] {
        let step = format!("[{platform} stage-1 3/3] RUN echo per platform");
        assert!(names.contains(&step), "{step} not in {names:#?}");
    }
    assert_eq!(g["roots"].as_array().unwrap().len(), 2, "{g}");
    assert_eq!(g["image"][1]["platform"], "linux/arm64");
    assert_eq!(g["image"][1]["config"]["architecture"], "arm64");
}
