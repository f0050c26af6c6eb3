//! Multi-platform builds (`--platform linux/amd64,linux/arm64`) from a two-platform base
//! in a real registry: one index, arm64 steps under QEMU, a `$BUILDPLATFORM` stage built
//! once for both; read back by skopeo and umoci.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use kiln_tests::oci_schema::assert_valid_layout;
use kiln_tests::registry::Registry;
use kiln_tests::{busybox_archives, kiln, load_into, push_multi_platform_busybox, run};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// `kiln build --progress plain` of `dockerfile` with a fresh context.
fn build(root: &Path, dockerfile: &str, extra: &[&str]) -> Output {
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
    kiln()
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .args(extra)
        .arg(context.path())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    run(Command::new("skopeo").args(args), true).stdout
}

/// The file `path` of the image `reference`'s `arch` platform, unpacked by umoci.
fn file_in(reference: &str, arch: &str, path: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:{arch}", dir.path().join("layout").display());
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--override-arch",
        arch,
        &format!("docker://{reference}"),
        &layout,
    ]);
    let bundle = dir.path().join("bundle");
    run(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{arch}", dir.path().join("layout").display()))
            .arg(&bundle),
        true,
    );
    fs::read_to_string(bundle.join("rootfs").join(path)).unwrap()
}

#[test]
fn two_platforms_make_one_index_with_a_shared_cross_stage() {
    let registry = Registry::start(None);
    let host = &registry.host;
    push_multi_platform_busybox(host, "busybox:1");
    let root = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("multi.tar");
    let metadata = out_dir.path().join("metadata.json");
    let app = format!("{host}/app:multi");
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {host}/busybox:1 AS cross\n\
         RUN uname -m > /built-on && cat /proc/sys/kernel/random/uuid > /stamp\n\
         FROM {host}/busybox:1\n\
         ARG TARGETPLATFORM\n\
         COPY --from=cross /built-on /stamp /\n\
         RUN uname -m > /arch && echo $TARGETPLATFORM > /target\n"
    );
    let out = build(
        root.path(),
        &dockerfile,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &app,
            "--push",
            "--metadata-file",
            metadata.to_str().unwrap(),
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    let progress = stderr(&out);
    assert!(out.status.success(), "{progress}");
    // Steps are named with their platform; the cross stage's RUN is one step.
    assert!(
        progress.contains("[linux/arm64 stage-1 3/3] RUN uname -m > /arch"),
        "{progress}"
    );
    assert!(
        progress.contains("[linux/amd64 stage-1 3/3] RUN uname -m > /arch"),
        "{progress}"
    );
    let cross_steps: Vec<&str> = progress
        .lines()
        .filter(|l| l.contains("] RUN uname -m > /built-on"))
        .collect();
    assert_eq!(
        cross_steps.len(),
        1,
        "the cross stage is one step:\n{progress}"
    );
    assert!(
        cross_steps[0].ends_with("[linux/amd64 cross 2/2] RUN uname -m > /built-on && cat /proc/sys/kernel/random/uuid > /stamp"),
        "{progress}"
    );

    // The store keeps the index under the name, each platform under it.
    let tree = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .args(["images", "--tree"]),
        true,
    )
    .stdout;
    let tree = String::from_utf8_lossy(&tree);
    let lines: Vec<&str> = tree.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{app} ")))
        .unwrap_or_else(|| panic!("{app} not listed:\n{tree}"));
    assert!(lines[at + 1].starts_with("├─ linux/amd64 "), "{tree}");
    assert!(lines[at + 2].starts_with("└─ linux/arm64 "), "{tree}");

    // The registry holds an index of both platforms, which skopeo copies whole.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{app}"),
    ]);
    let index: Value = serde_json::from_slice(&raw).unwrap();
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{index}");
    let metadata: Value = serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
    let index_digest = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
    assert_eq!(metadata["containerimage.digest"], index_digest.as_str());
    assert!(metadata.get("containerimage.config.digest").is_none());
    let copied = out_dir.path().join("copied");
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{app}"),
        &format!("oci:{}:multi", copied.display()),
    ]);
    assert_valid_layout(&copied);

    // Each platform runs its own architecture; both hold the one cross stage's output.
    assert_eq!(file_in(&app, "amd64", "arch"), "x86_64\n");
    assert_eq!(file_in(&app, "arm64", "arch"), "aarch64\n");
    assert_eq!(file_in(&app, "arm64", "target"), "linux/arm64\n");
    assert_eq!(file_in(&app, "arm64", "built-on"), "x86_64\n");
    assert_eq!(
        file_in(&app, "amd64", "stamp"),
        file_in(&app, "arm64", "stamp")
    );

    // The OCI archive holds the same index, valid by the image-spec's schemas.
    let unpacked = out_dir.path().join("unpacked");
    kiln_tests::untar(&archive, &unpacked);
    assert_valid_layout(&unpacked);
    let top: Value =
        serde_json::from_slice(&fs::read(unpacked.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        top["manifests"][0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
}

#[test]
fn rootfs_outputs_put_each_platform_in_its_folder_and_docker_archives_are_refused() {
    let registry = Registry::start(None);
    let host = &registry.host;
    push_multi_platform_busybox(host, "busybox:1");
    let root = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let dockerfile = format!("FROM {host}/busybox:1\nRUN uname -m > /arch\n");
    let platforms = ["--platform", "linux/amd64", "--platform", "linux/arm64"];
    let local = dest.path().join("local");
    let tar = dest.path().join("rootfs.tar");
    let out = build(
        root.path(),
        &dockerfile,
        &[
            &platforms[..],
            &["-o", &format!("type=local,dest={}", local.display())],
            &["-o", &format!("type=tar,dest={}", tar.display())],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(local.join("linux_amd64/arch")).unwrap(),
        "x86_64\n"
    );
    assert_eq!(
        fs::read_to_string(local.join("linux_arm64/arch")).unwrap(),
        "aarch64\n"
    );
    let listing = run(Command::new("tar").arg("-tf").arg(&tar), true).stdout;
    let listing = String::from_utf8_lossy(&listing);
    assert!(
        listing.lines().any(|l| l == "linux_arm64/arch"),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l == "linux_amd64/bin/busybox"),
        "{listing}"
    );

    let out = build(
        root.path(),
        &dockerfile,
        &[
            &platforms[..],
            &[
                "-o",
                &format!("type=docker,dest={}", dest.path().join("d.tar").display()),
            ],
        ]
        .concat(),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("docker exporter does not currently support exporting manifest lists"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_base_without_the_platform_fails_from_a_registry_and_warns_from_the_store() {
    let registry = Registry::start(None);
    let host = &registry.host;
    let archives = busybox_archives();
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}", archives.oci.display()),
        &format!("docker://{host}/amd64-only:1"),
    ]);
    let root = tempfile::tempdir().unwrap();
    let out = build(
        root.path(),
        &format!("FROM {host}/amd64-only:1\nRUN uname -m > /arch\n"),
        &["--platform", "linux/arm64"],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no image for linux/arm64 (it is a single linux/amd64 image)"),
        "{}",
        stderr(&out)
    );

    // A single-platform image of the local store: BuildKit's warning, never silence.
    load_into(root.path(), &archives.oci);
    let out = build(
        root.path(),
        "FROM busybox:1\nRUN true\n",
        &["--platform", "linux/arm64"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "InvalidBaseImagePlatform: Base image busybox:1 was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build (line 1)"
        ),
        "{}",
        stderr(&out)
    );
}
