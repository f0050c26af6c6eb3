//! `kiln tag`, `kiln save`, `kiln inspect` and `kiln completion` through the binary, with
//! skopeo reading what `kiln save` writes.

use std::path::Path;
use std::process::Command;

use kiln_tests::{busybox_archives, kiln, run};

fn kiln_at(root: &Path) -> Command {
    let mut cmd = kiln();
    cmd.arg("--root").arg(root);
    cmd
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd, true).stdout).unwrap()
}

fn stderr_of_failure(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd, false).stderr).unwrap()
}

/// A state directory holding busybox:1, and the busybox image's ID (its config digest) as
/// `kiln inspect` reports it.
fn loaded_busybox(root: &Path) -> String {
    let archives = busybox_archives();
    run(kiln_at(root).args(["load", "-i"]).arg(&archives.oci), true);
    let inspected: serde_json::Value =
        serde_json::from_str(&stdout(kiln_at(root).args(["inspect", "busybox:1"]))).unwrap();
    inspected[0]["Id"].as_str().unwrap().to_string()
}

/// The config digest that the manifest of `busybox:1` names, read from the store.
fn config_digest(root: &Path) -> String {
    let listing = stdout(kiln_at(root).args(["images", "--digests"]));
    let row = listing
        .lines()
        .find(|l| l.starts_with("busybox "))
        .unwrap_or_else(|| panic!("no busybox row in:\n{listing}"));
    let manifest = row.split_whitespace().nth(2).unwrap();
    let path = root
        .join("content/blobs/sha256")
        .join(manifest.strip_prefix("sha256:").unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    manifest["config"]["digest"].as_str().unwrap().to_string()
}

#[test]
fn tag_adds_a_name_that_images_lists() {
    let root = tempfile::tempdir().unwrap();
    let id = loaded_busybox(root.path());
    let out = stdout(kiln_at(root.path()).args(["tag", "busybox:1", "127.0.0.1:5000/tools/bb:v2"]));
    assert_eq!(out, "", "docker tag prints nothing");
    // By image ID (a prefix, without sha256:) as well.
    let short = &id["sha256:".len().."sha256:".len() + 12];
    run(kiln_at(root.path()).args(["tag", short, "other"]), true);

    let listing = stdout(kiln_at(root.path()).arg("images"));
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let names: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        names,
        [
            ("127.0.0.1:5000/tools/bb", "v2"),
            ("busybox", "1"),
            ("other", "latest")
        ],
        "{listing}"
    );
    assert!(
        rows.iter().all(|r| r[2] == short),
        "one image ID:\n{listing}"
    );

    let err = stderr_of_failure(kiln_at(root.path()).args(["tag", "nope:1", "x"]));
    assert!(err.contains("No such image: nope:1"), "{err}");
    let err = stderr_of_failure(kiln_at(root.path()).args(["tag", "busybox:1", "Bad/Name"]));
    assert!(
        err.contains("\"Bad/Name\" is not a valid repository/tag")
            && err.contains("invalid reference format"),
        "{err}"
    );
}

#[test]
fn save_writes_an_archive_skopeo_reads_and_kiln_loads_back() {
    let root = tempfile::tempdir().unwrap();
    loaded_busybox(root.path());
    run(
        kiln_at(root.path()).args(["tag", "busybox:1", "127.0.0.1:5000/tools/bb:v2"]),
        true,
    );
    let config = config_digest(root.path());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("saved.tar");
    let out = stdout(
        kiln_at(root.path())
            .args(["save", "-o"])
            .arg(&archive)
            .args(["busybox:1", "127.0.0.1:5000/tools/bb:v2"]),
    );
    assert_eq!(out, "");

    let raw = stdout(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("docker-archive:{}", archive.display())),
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(manifest["config"]["digest"], config.as_str(), "{raw}");
    let inspected = stdout(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}:busybox:1", archive.display())),
    );
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["Os"], "linux");

    // One image, under both names, in docker's manifest.json.
    let mut entries = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let docker_manifest: serde_json::Value = entries
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("manifest.json"))
        .map(|e| serde_json::from_reader(e).unwrap())
        .expect("manifest.json in the archive");
    assert_eq!(
        docker_manifest,
        serde_json::json!([{
            "Config": format!("blobs/sha256/{}", config.strip_prefix("sha256:").unwrap()),
            "RepoTags": ["busybox:1", "127.0.0.1:5000/tools/bb:v2"],
            "Layers": docker_manifest[0]["Layers"],
        }])
    );

    let fresh = tempfile::tempdir().unwrap();
    let out = stdout(kiln_at(fresh.path()).args(["load", "-i"]).arg(&archive));
    assert_eq!(
        out,
        "Loaded image: busybox:1\nLoaded image: 127.0.0.1:5000/tools/bb:v2\n"
    );
    assert_eq!(config_digest(fresh.path()), config);

    // To standard output when it is not a terminal.
    let piped = run(kiln_at(root.path()).args(["save", "busybox"]), true).stdout;
    assert_eq!(&piped[257..262], b"ustar", "a tar on stdout");

    // Nothing is written for an image that is not there.
    let missing = dir.path().join("missing.tar");
    let err = stderr_of_failure(
        kiln_at(root.path())
            .args(["save", "-o"])
            .arg(&missing)
            .args(["busybox:1", "nope"]),
    );
    assert!(err.contains("No such image: nope"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn inspect_prints_docker_json_and_fails_for_unknown_names() {
    let root = tempfile::tempdir().unwrap();
    loaded_busybox(root.path());
    let config = config_digest(root.path());

    let out = stdout(kiln_at(root.path()).args(["inspect", "busybox:1"]));
    let images: serde_json::Value = serde_json::from_str(&out).unwrap();
    let image = &images[0];
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(image["Id"], config.as_str());
    assert_eq!(image["RepoTags"], serde_json::json!(["busybox:1"]));
    assert_eq!(image["Os"], "linux");
    assert!(image["Architecture"].is_string());
    assert_eq!(image["Config"]["Cmd"], serde_json::json!(["sh"]), "{out}");
    assert_eq!(image["RootFS"]["Type"], "layers");
    let layers = image["RootFS"]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert!(layers[0].as_str().unwrap().starts_with("sha256:"));
    assert!(image["Size"].as_u64().unwrap() > 0);

    // By image ID; an unknown name fails after the others are printed.
    let output = run(
        kiln_at(root.path()).args(["inspect", &config, "nope"]),
        false,
    );
    let images: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["Id"], config.as_str());
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(err.contains("No such image: nope"), "{err}");
}

#[test]
fn completion_scripts_name_the_commands() {
    let bash = stdout(kiln().args(["completion", "bash"]));
    assert!(
        bash.contains("build") && bash.contains("complete -F"),
        "{bash}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = stdout(kiln().args(["completion", shell]));
        assert!(script.contains("inspect"), "{shell}:\n{script}");
    }
    let err = stderr_of_failure(kiln().args(["completion", "tcsh"]));
    assert!(err.contains("invalid value"), "{err}");
}
