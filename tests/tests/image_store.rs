//! `kiln load`, `kiln images` and `kiln rmi` against archives made by umoci and skopeo.

use std::fs;
use std::process::Command;

use kiln_tests::{busybox_archives, kiln, run};

fn kiln_at(root: &std::path::Path) -> Command {
    let mut cmd = kiln();
    cmd.arg("--root").arg(root);
    cmd
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd, true).stdout).unwrap()
}

#[test]
fn loads_oci_and_docker_archives_and_lists_them() {
    let archives = busybox_archives();
    let root = tempfile::tempdir().unwrap();

    let out = stdout(kiln_at(root.path()).args(["load", "-i"]).arg(&archives.oci));
    assert_eq!(out, "Loaded image: busybox:1\n");
    let out = stdout(
        kiln_at(root.path())
            .args(["load", "-t", "127.0.0.1:5000/tools/bb:v2", "-i"])
            .arg(&archives.docker),
    );
    assert_eq!(
        out,
        "Loaded image: busybox:1\nLoaded image: 127.0.0.1:5000/tools/bb:v2\n"
    );

    let listing = stdout(kiln_at(root.path()).arg("images"));
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines[0].starts_with("REPOSITORY"), "{listing}");
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("127.0.0.1:5000/tools/bb") && l.contains(" v2 "))
    );
    // Both archives carry the same config, so the image ID is the same.
    let ids: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(ids[0], ids[1]);
    // --digests adds the manifest digest after the tag.
    let listing = stdout(kiln_at(root.path()).args(["images", "--digests"]));
    let row = listing.lines().nth(1).unwrap();
    let digest = row.split_whitespace().nth(2).unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{listing}"
    );

    // Every blob is stored under its own digest.
    for entry in fs::read_dir(root.path().join("content/blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let sum = run(Command::new("sha256sum").arg(&path), true);
        let hex = String::from_utf8_lossy(&sum.stdout)[..64].to_string();
        assert_eq!(path.file_name().unwrap().to_string_lossy(), hex);
    }

    let out = stdout(kiln_at(root.path()).args(["rmi", "127.0.0.1:5000/tools/bb:v2"]));
    assert!(
        out.starts_with("Untagged: 127.0.0.1:5000/tools/bb:v2\n"),
        "{out}"
    );
    let listing = stdout(kiln_at(root.path()).arg("images"));
    assert_eq!(listing.lines().count(), 2, "{listing}");

    let out = run(kiln_at(root.path()).args(["rmi", "nope"]), false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such image: nope"));
}

/// As `docker build` without `-t`: the image stays, listed as `<none>`, until `kiln rmi ID`;
/// CREATED comes from the image config and sizes read as docker prints them.
#[test]
fn untagged_builds_are_listed_and_removed_by_id() {
    let archives = busybox_archives();
    let root = tempfile::tempdir().unwrap();
    stdout(kiln_at(root.path()).args(["load", "-i"]).arg(&archives.oci));
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN echo built > /built\n",
    )
    .unwrap();
    let iidfile = context.path().join("iid");
    run(
        kiln_at(root.path())
            .arg("build")
            .arg("--iidfile")
            .arg(&iidfile)
            .arg(context.path()),
        true,
    );
    let id = fs::read_to_string(&iidfile).unwrap();
    let short = &id["sha256:".len()..][..12];
    let listing = stdout(kiln_at(root.path()).arg("images"));
    let row = listing
        .lines()
        .find(|l| l.contains(short))
        .unwrap_or_else(|| panic!("{short} not listed:\n{listing}"));
    let columns: Vec<&str> = row
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(columns[..2], ["<none>", "<none>"], "{listing}");
    assert!(
        [
            "Less than a second ago",
            "1 second ago",
            "2 seconds ago",
            "3 seconds ago"
        ]
        .contains(&columns[3])
            || columns[3].ends_with("seconds ago"),
        "{listing}"
    );
    // Three significant digits, as docker (go-units) prints sizes.
    let size = columns[4];
    let digits: String = size.chars().filter(char::is_ascii_digit).collect();
    assert!(digits.len() <= 3 && size.ends_with("MB"), "{size}");

    let out = stdout(kiln_at(root.path()).args(["rmi", short]));
    assert_eq!(out, format!("Deleted: {}\n", id.trim()));
    let listing = stdout(kiln_at(root.path()).arg("images"));
    assert!(!listing.contains(short), "{listing}");
    assert!(!listing.contains("<none>"), "{listing}");
}

#[test]
fn corrupt_or_truncated_archives_fail_cleanly() {
    let archives = busybox_archives();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();

    // A blob whose content does not match its name.
    let layout = work.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("blobs/sha256").join("a".repeat(64)),
        b"not what the name says",
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    let bad = work.path().join("bad.tar");
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&bad)
            .arg("."),
        true,
    );
    let out = run(kiln_at(root.path()).args(["load", "-i"]).arg(&bad), false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("content digest mismatch"), "{err}");

    // An index that names a manifest the archive does not hold is not "Loaded".
    fs::remove_file(layout.join("blobs/sha256").join("a".repeat(64))).unwrap();
    fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":10,"annotations":{{"io.containerd.image.name":"docker.io/library/ghost:1"}}}}]}}"#,
            "b".repeat(64)
        ),
    )
    .unwrap();
    let hollow = work.path().join("hollow.tar");
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&hollow)
            .arg("."),
        true,
    );
    let out = run(
        kiln_at(root.path()).args(["load", "-i"]).arg(&hollow),
        false,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("which it does not hold"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Loaded"));

    // The real archive cut in half.
    let bytes = fs::read(&archives.docker).unwrap();
    let cut = work.path().join("cut.tar");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = run(kiln_at(root.path()).args(["load", "-i"]).arg(&cut), false);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    // Not an archive at all.
    let junk = work.path().join("junk");
    fs::write(&junk, b"hello").unwrap();
    let out = run(kiln_at(root.path()).args(["load", "-i"]).arg(&junk), false);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));

    // Nothing was named, no blob is left half-written, and listing still works.
    let listing = stdout(kiln_at(root.path()).arg("images"));
    assert_eq!(listing.lines().count(), 1, "{listing}");
    let ingest = root.path().join("content/ingest");
    assert_eq!(fs::read_dir(ingest).unwrap().count(), 0);
    for entry in fs::read_dir(root.path().join("content/blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let sum = run(Command::new("sha256sum").arg(&path), true);
        assert!(
            String::from_utf8_lossy(&sum.stdout)
                .starts_with(&*path.file_name().unwrap().to_string_lossy())
        );
    }
}

/// A damaged database never makes kiln panic: the image store says what is wrong and
/// stops, and a damaged cache is set aside for an empty one.
#[test]
fn damaged_databases_are_errors_not_panics() {
    let archives = busybox_archives();
    let root = tempfile::tempdir().unwrap();
    run(
        kiln_at(root.path()).args(["load", "-i"]).arg(&archives.oci),
        true,
    );
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN echo cached\n",
    )
    .unwrap();
    run(kiln_at(root.path()).arg("build").arg(context.path()), true);

    let images = root.path().join("kiln.redb");
    let intact = fs::read(&images).unwrap();
    for damaged in [&intact[..intact.len() / 3], &[][..]] {
        fs::write(&images, damaged).unwrap();
        let out = run(kiln_at(root.path()).arg("images"), false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("the file is damaged"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    fs::write(&images, &intact).unwrap();

    let cache = root.path().join("cache.redb");
    let length = fs::metadata(&cache).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&cache)
        .unwrap()
        .set_len(length / 3)
        .unwrap();
    let out = run(kiln_at(root.path()).arg("build").arg(context.path()), true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is set aside as"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(root.path().join("cache.redb.damaged").exists());
}

/// Blobs are checked whenever they are read: a flipped byte in a layer or an edited config
/// is an error, never exported or used; `kiln check` finds them and `--repair` removes
/// them with the names of the images that needed them.
#[test]
fn damaged_blobs_are_refused_found_and_repaired() {
    let archives = busybox_archives();
    let root = tempfile::tempdir().unwrap();
    stdout(kiln_at(root.path()).args(["load", "-i"]).arg(&archives.oci));
    let blobs = root.path().join("content/blobs/sha256");
    let largest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&largest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&largest, &bytes).unwrap();

    let saved = tempfile::tempdir().unwrap();
    let out = run(
        kiln_at(root.path())
            .args(["save", "-o"])
            .arg(saved.path().join("bb.tar"))
            .arg("busybox:1"),
        false,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is damaged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(kiln_at(root.path()).arg("check"), false);
    let report = String::from_utf8_lossy(&out.stdout);
    let damaged = format!(
        "damaged: sha256:{}",
        largest.file_name().unwrap().to_string_lossy()
    );
    assert!(report.contains(&damaged), "{report}");
    assert!(
        report.contains("image docker.io/library/busybox:1 reaches a damaged or missing blob"),
        "{report}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("kiln check --repair"));

    let out = stdout(kiln_at(root.path()).args(["check", "--repair"]));
    assert!(
        out.contains("Removed 1 damaged blobs and 1 image names"),
        "{out}"
    );
    assert!(!largest.exists());
    assert!(!stdout(kiln_at(root.path()).arg("images")).contains("busybox"));
    let out = stdout(kiln_at(root.path()).arg("check"));
    assert!(out.contains(": 0 damaged"), "{out}");
}
