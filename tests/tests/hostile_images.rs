//! Images that lie about their layers: a layer whose content is not the diff_id the image's
//! config claims must never stand in for the real layer of another image, whether the liar
//! came in through `kiln load` or through a registry pull.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_tests::registry::Registry;
use kiln_tests::{busybox_archives, kiln, run};

/// A `docker save` archive named `name` whose config is busybox's (so it claims busybox's
/// layer diff_id) but whose layer is busybox's tar with `/pwned` appended.
fn lying_archive(dir: &Path, name: &str) -> PathBuf {
    let archives = busybox_archives();
    let unpacked = dir.join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archives.docker)
            .arg("-C")
            .arg(&unpacked),
        true,
    );
    let manifest_path = unpacked.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    let layer = unpacked.join(manifest[0]["Layers"][0].as_str().unwrap());
    let payload = dir.join("payload");
    fs::create_dir(&payload).unwrap();
    fs::write(payload.join("pwned"), "attacker's file\n").unwrap();
    fs::set_permissions(&layer, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    run(
        Command::new("tar")
            .arg("-rf")
            .arg(&layer)
            .arg("-C")
            .arg(&payload)
            .arg("pwned"),
        true,
    );
    manifest[0]["RepoTags"] = serde_json::json!([name]);
    fs::set_permissions(
        &manifest_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    fs::write(&manifest_path, manifest.to_string()).unwrap();
    let archive = dir.join("lying.tar");
    run(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked)
            .arg("."),
        true,
    );
    archive
}

fn kiln_in(root: &Path) -> Command {
    let mut command = kiln();
    command.arg("--root").arg(root);
    command
}

fn build(root: &Path, dockerfile: &str) -> Output {
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
    kiln_in(root)
        .args(["build", "--progress", "plain"])
        .arg(context.path())
        .output()
        .unwrap()
}

/// Builds `FROM base` (expecting the lie to be caught), then `FROM busybox:1`, which must
/// run on busybox's own files.
fn assert_lie_is_caught(root: &Path, base: &str) {
    let out = build(root, &format!("FROM {base}\nRUN true\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the lying image was used:\n{stderr}");
    assert!(
        stderr.contains("the layer is not what the image claims"),
        "{stderr}"
    );

    let busybox = busybox_archives();
    run(kiln_in(root).args(["load", "-i"]).arg(&busybox.oci), true);
    let out = build(
        root,
        "FROM busybox:1\nRUN if [ -e /pwned ]; then echo poisoned; exit 1; fi\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "busybox was poisoned:\n{stderr}");
}

#[test]
fn a_loaded_image_cannot_pass_its_layer_off_as_another() {
    let dir = tempfile::tempdir().unwrap();
    let archive = lying_archive(dir.path(), "liar:1");
    let root = tempfile::tempdir().unwrap();
    run(
        kiln_in(root.path()).args(["load", "-i"]).arg(&archive),
        true,
    );
    assert_lie_is_caught(root.path(), "liar:1");
}

#[test]
fn a_pulled_image_cannot_pass_its_layer_off_as_another() {
    let registry = Registry::start(None);
    let name = format!("{}/liar:1", registry.host);
    let dir = tempfile::tempdir().unwrap();
    let archive = lying_archive(dir.path(), &name);
    // The liar reaches the registry from another state directory, as it would from an
    // attacker's machine.
    let pusher = tempfile::tempdir().unwrap();
    run(
        kiln_in(pusher.path()).args(["load", "-i"]).arg(&archive),
        true,
    );
    run(kiln_in(pusher.path()).arg("push").arg(&name), true);

    let root = tempfile::tempdir().unwrap();
    assert_lie_is_caught(root.path(), &name);
}
