//! `--cache-to` / `--cache-from` against a real registry and a directory: a fresh state
//! directory with the cache runs no step, gives the same image, and fetches layers only
//! when it needs their bytes.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use kiln_tests::registry::Registry;
use kiln_tests::{BusyboxArchives, busybox_archives, kiln, load_into, run};
use serde_json::Value;

const DOCKERFILE: &str = "\
FROM busybox:1 AS tools
RUN echo ran-tools | tr a-z A-Z && echo tool > /tool
FROM busybox:1
COPY app.txt /app.txt
COPY --from=tools /tool /tool
RUN echo ran-final | tr a-z A-Z && cat /app.txt /tool > /both
";

/// A fresh state directory with `base` loaded: the same base image in each (the script
/// that makes it stamps every run with its own time).
fn state_with(base: &BusyboxArchives) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    load_into(root.path(), &base.oci);
    root
}

/// A context with the test Dockerfile and `app.txt` holding `app`.
fn context(app: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(dir.path().join("app.txt"), app).unwrap();
    dir
}

/// `kiln build` with `SOURCE_DATE_EPOCH=0`; returns the progress and the image ID.
fn build(root: &Path, context: &Path, extra: &[&str]) -> (String, String) {
    let iid = tempfile::NamedTempFile::new().unwrap();
    let out: Output = kiln()
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain", "--iidfile"])
        .arg(iid.path())
        .args(extra)
        .arg(context)
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{progress}");
    (progress, fs::read_to_string(iid.path()).unwrap())
}

/// The layer digests of the cache manifest `reference`.
fn cache_layers(reference: &str) -> Vec<String> {
    let raw = run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}")),
        true,
    )
    .stdout;
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_registry_cache_makes_a_fresh_state_directory_run_nothing_and_fetch_lazily() {
    let registry = Registry::start(None);
    let cache = format!("{}/cache:app", registry.host);
    let base = busybox_archives();
    let first = state_with(&base);
    let app = context("one\n");
    let (progress, image) = build(
        first.path(),
        app.path(),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert!(progress.contains("RAN-TOOLS"), "{progress}");
    let layers = cache_layers(&cache);
    assert!(!layers.is_empty());
    let layer_gets = || -> usize {
        layers
            .iter()
            .map(|l| registry.requests(&format!("\"GET /v2/cache/blobs/{l}")))
            .sum()
    };

    // A fresh state directory: every step from the cache, the same image, and pushed to
    // the cache's registry without downloading a layer (they are mounted).
    let fresh = state_with(&base);
    let pushed = format!("{}/app:1", registry.host);
    let (progress, again) = build(
        fresh.path(),
        app.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "-o",
            &format!("type=registry,name={pushed}"),
        ],
    );
    assert!(!progress.contains("RAN-"), "a step ran:\n{progress}");
    assert_eq!(again, image);
    assert_eq!(
        layer_gets(),
        0,
        "layers were downloaded for a push-only cached build"
    );
    run(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{pushed}"))
            .arg(format!("oci:{}:app", fresh.path().join("copied").display())),
        true,
    );

    // Kept in the local store, the image has every layer: they are fetched now.
    let (progress, kept) = build(
        fresh.path(),
        app.path(),
        &["--cache-from", &cache, "-t", "app:1"],
    );
    assert!(!progress.contains("RAN-"), "a step ran:\n{progress}");
    assert_eq!(kept, image);
    assert!(layer_gets() > 0);
    run(
        kiln()
            .arg("--root")
            .arg(fresh.path())
            .args(["save", "-o"])
            .arg(fresh.path().join("saved.tar"))
            .arg("app:1"),
        true,
    );

    // One changed input reruns only the steps it feeds; their base layers come now.
    let changed = context("two\n");
    let (progress, _) = build(
        fresh.path(),
        changed.path(),
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert!(!progress.contains("RAN-TOOLS"), "{progress}");
    assert!(progress.contains("RAN-FINAL"), "{progress}");
}

#[test]
fn a_local_cache_round_trips_and_a_missing_one_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let base = busybox_archives();
    let first = state_with(&base);
    let app = context("one\n");
    let (_, image) = build(
        first.path(),
        app.path(),
        &[
            "--cache-to",
            &format!("type=local,dest={}", cache.display()),
        ],
    );
    assert!(cache.join("index.json").is_file());
    let fresh = state_with(&base);
    let (progress, again) = build(
        fresh.path(),
        app.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", cache.display()),
        ],
    );
    // mode=min (the default) records the final image's steps: the `tools` stage is not
    // in it, so only it runs again.
    assert!(progress.contains("RAN-TOOLS"), "{progress}");
    assert!(!progress.contains("RAN-FINAL"), "{progress}");
    assert_eq!(again, image);

    let missing = dir.path().join("nothing-here");
    let (progress, _) = build(
        state_with(&base).path(),
        app.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", missing.display()),
        ],
    );
    assert!(
        progress.contains("WARNING: importing cache manifest from"),
        "{progress}"
    );
}

#[test]
fn an_inline_cache_travels_in_the_pushed_image() {
    let registry = Registry::start(None);
    let base = busybox_archives();
    let image_name = format!("{}/app:inline", registry.host);
    let app = context("one\n");
    let first = state_with(&base);
    // As CI scripts ask for it with buildx: the build argument means `--cache-to type=inline`.
    let (first_progress, image) = build(
        first.path(),
        app.path(),
        &[
            "--build-arg",
            "BUILDKIT_INLINE_CACHE=1",
            "-t",
            &image_name,
            "--push",
        ],
    );
    assert!(!first_progress.contains("not consumed"), "{first_progress}");
    let config = run(
        Command::new("skopeo")
            .args(["inspect", "--config", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{image_name}")),
        true,
    )
    .stdout;
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert!(
        config["kiln.cache.v1"]["records"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{config}"
    );

    // A fresh runner reads it from the image: the final stage's steps are cached (the
    // `tools` stage is not in the image, so it runs), and the rebuilt image is the same.
    let fresh = state_with(&base);
    let (progress, again) = build(
        fresh.path(),
        app.path(),
        &["--cache-from", &image_name, "--cache-to", "type=inline"],
    );
    assert!(!progress.contains("RAN-FINAL"), "{progress}");
    assert_eq!(again, image);

    // An image built on it does not inherit the cache.
    let derived = tempfile::tempdir().unwrap();
    fs::write(
        derived.path().join("Dockerfile"),
        format!("FROM {image_name}\nRUN true\n"),
    )
    .unwrap();
    let archive = derived.path().join("derived.tar");
    build(
        fresh.path(),
        derived.path(),
        &["-o", &format!("type=oci,dest={}", archive.display())],
    );
    let unpacked = derived.path().join("unpacked");
    kiln_tests::untar(&archive, &unpacked);
    let blob = |digest: &Value| {
        let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
        serde_json::from_slice::<Value>(&fs::read(unpacked.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&fs::read(unpacked.join("index.json")).unwrap()).unwrap();
    let manifest = blob(&index["manifests"][0]["digest"]);
    let config = blob(&manifest["config"]["digest"]);
    assert!(config["rootfs"].is_object(), "{config}");
    assert!(config.get("kiln.cache.v1").is_none(), "{config}");
}

#[test]
fn cache_mounts_travel_with_cache_mounts_true() {
    let base = busybox_archives();
    let dir = tempfile::tempdir().unwrap();
    let with_mounts = dir.path().join("with-mounts");
    let without = dir.path().join("without");
    let context = |word: &str| {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("Dockerfile"),
            "FROM busybox:1\nCOPY word /word\n\
             RUN --mount=type=cache,target=/cache,id=compiler \
             ls /cache | sed 's/^/seen-/' | tr a-z A-Z; cp /word /cache/$(cat /word)\n",
        )
        .unwrap();
        fs::write(dir.path().join("word"), word).unwrap();
        dir
    };
    let first = state_with(&base);
    build(
        first.path(),
        context("one").path(),
        &[
            "--cache-to",
            &format!(
                "type=local,dest={},cache-mounts=true",
                with_mounts.display()
            ),
            "--cache-to",
            &format!("type=local,dest={}", without.display()),
        ],
    );

    // A changed source on a fresh runner: the step runs, with the compiler cache warm.
    let (progress, _) = build(
        state_with(&base).path(),
        context("two").path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", with_mounts.display()),
        ],
    );
    assert!(progress.contains("SEEN-ONE"), "{progress}");
    let (progress, _) = build(
        state_with(&base).path(),
        context("two").path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", without.display()),
        ],
    );
    assert!(!progress.contains("SEEN-ONE"), "{progress}");
}

/// A base image from the registry is pulled lazily too: a cached build that only pushes
/// downloads neither the cache's layers nor the base's.
#[test]
fn a_registry_base_is_not_downloaded_by_a_cached_push() {
    let registry = Registry::start(None);
    let host = &registry.host;
    let base = busybox_archives();
    run(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", base.oci.display()))
            .arg(format!("docker://{host}/busybox:1")),
        true,
    );
    let app = tempfile::tempdir().unwrap();
    fs::write(
        app.path().join("Dockerfile"),
        format!("FROM {host}/busybox:1\nRUN echo made > /made\n"),
    )
    .unwrap();
    let cache = format!("{host}/cache:base");
    let first = tempfile::tempdir().unwrap();
    let (_, image) = build(
        first.path(),
        app.path(),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    let blob_gets = || {
        registry.requests("\"GET /v2/busybox/blobs/") + registry.requests("\"GET /v2/cache/blobs/")
    };
    let before = blob_gets();
    let fresh = tempfile::tempdir().unwrap();
    let (progress, again) = build(
        fresh.path(),
        app.path(),
        &[
            "--cache-from",
            &cache,
            "-o",
            &format!("type=registry,name={host}/app:lazy"),
        ],
    );
    assert_eq!(again, image, "{progress}");
    // The base's config and the cache's records, nothing else.
    assert_eq!(blob_gets() - before, 2, "{progress}");
    run(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{host}/app:lazy")),
        true,
    );
    // The store says nothing is wrong with the base whose layers stayed in the registry,
    // and a build that needs them fetches them.
    run(kiln().arg("--root").arg(fresh.path()).arg("check"), true);
    let out = tempfile::tempdir().unwrap();
    build(
        fresh.path(),
        app.path(),
        &[
            "--no-cache",
            "-o",
            &format!("type=local,dest={}", out.path().display()),
        ],
    );
    assert_eq!(
        fs::read_to_string(out.path().join("made")).unwrap(),
        "made\n"
    );
}
