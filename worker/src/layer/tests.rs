//! Round trips through [`write_layer`] and [`apply_layer`], and hostile tars.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::Path;

use kiln_cache::Digest;
use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
use tar::{EntryType, Header};

use super::*;

/// One line per path: type, mode, owner, size, content, link target,
/// device, xattrs and hard-link group: everything a layer must keep.
fn describe(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inodes = Vec::new();
    walk(root, root, &mut lines, &mut inodes);
    lines
}

fn walk(root: &Path, dir: &Path, lines: &mut Vec<String>, inodes: &mut Vec<u64>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let content = if meta.is_file() {
            format!("{:?}", fs::read(&path).unwrap().len())
        } else {
            String::new()
        };
        let link = fs::read_link(&path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let mut xattrs: Vec<_> = xattr::list(&path)
            .unwrap()
            .map(|n| {
                format!(
                    "{}={:?}",
                    n.to_string_lossy(),
                    xattr::get(&path, &n).unwrap()
                )
            })
            .collect();
        xattrs.sort();
        let group = if meta.is_file() && meta.nlink() > 1 {
            let pos = inodes
                .iter()
                .position(|&i| i == meta.ino())
                .unwrap_or_else(|| {
                    inodes.push(meta.ino());
                    inodes.len() - 1
                });
            format!("link-group-{pos}")
        } else {
            String::new()
        };
        let mtime = if meta.is_dir() || meta.file_type().is_symlink() {
            0
        } else {
            meta.mtime()
        };
        lines.push(format!(
            "{rel} {:o} {}:{} size={content} link={link} rdev={} {xattrs:?} {group} mtime={mtime}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.rdev()
        ));
        if meta.is_dir() {
            walk(root, &path, lines, inodes);
        }
    }
}

fn round_trip(src: &Path) -> (Vec<u8>, tempfile::TempDir) {
    let mut tar = Vec::new();
    write_layer(src, &[], &mut tar, WriteOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    apply_tar(&tar, out.path()).unwrap();
    (tar, out)
}

/// A [`LayerBlob`] of `blob`, whose tar (decompressed) is `tar`.
fn layer_of(blob: &[u8], tar: &[u8]) -> LayerBlob {
    LayerBlob {
        diff_id: Digest::of(tar),
        digest: Digest::of(blob),
        size: blob.len() as u64,
        media_type: TAR_LAYER_MEDIA_TYPE.to_string(),
        created: None,
    }
}

/// Applies an uncompressed layer that claims to be what it is.
fn apply_tar(tar: &[u8], dest: &Path) -> anyhow::Result<ApplyStats> {
    apply_layer(tar, dest, &layer_of(tar, tar))
}

#[test]
fn every_kind_of_entry_survives_a_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    fs::create_dir_all(root.join("etc/deep")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(root.join("empty"), "").unwrap();
    fs::write(root.join("setuid"), "#!/bin/sh\n").unwrap();
    lchown(root.join("setuid"), Some(1000), Some(50)).unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("etc/deep/passwd-link")).unwrap();
    symlink("../passwd", root.join("etc/deep/sym")).unwrap();
    symlink("/nonexistent/absolute", root.join("dangling")).unwrap();
    let long = "d".repeat(90) + "/" + &"f".repeat(120);
    fs::create_dir(root.join("d".repeat(90))).unwrap();
    fs::write(root.join(&long), "long").unwrap();
    symlink("t".repeat(150), root.join("longlink")).unwrap();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    (&sparse).write_all(b"x").unwrap();
    xattr::set(root.join("etc/passwd"), "user.kiln", b"value").unwrap();
    // cap_net_bind_service+ep (VFS_CAP_REVISION_2): file capabilities stay in layers.
    let capability = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    xattr::set(root.join("setuid"), "security.capability", &capability).unwrap();
    mknodat(
        CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    mknodat(
        CWD,
        root.join("removed"),
        FileType::CharacterDevice,
        Mode::empty(),
        makedev(0, 0),
    )
    .unwrap();
    // A whiteout keeps its time too (it once took the unpacking's, a second apart now
    // and then).
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_symlink_file_times(root.join("removed"), old, old).unwrap();
    fs::create_dir(root.join("opaque")).unwrap();
    fs::write(root.join("opaque/kept"), "k").unwrap();
    xattr::set(root.join("opaque"), OVERLAY_OPAQUE_XATTR, b"y").unwrap();

    let (tar, out) = round_trip(root);
    // Only file capabilities among the xattrs reach the layer, as with BuildKit.
    xattr::remove(root.join("etc/passwd"), "user.kiln").unwrap();
    assert_eq!(describe(out.path()), describe(root));
    assert!(
        describe(root)
            .iter()
            .any(|line| line.starts_with("setuid") && line.contains("security.capability")),
        "the capability is set"
    );

    let names: Vec<String> = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&".wh.removed".to_string()), "{names:?}");
    assert!(
        names.contains(&"opaque/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&long), "long names use PAX records");
}

#[test]
fn identical_trees_give_identical_bytes_and_epoch_clamps_mtimes() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), "a").unwrap();
    let mut first = Vec::new();
    let mut second = Vec::new();
    write_layer(src.path(), &[], &mut first, WriteOptions::default()).unwrap();
    write_layer(src.path(), &[], &mut second, WriteOptions::default()).unwrap();
    assert_eq!(first, second);

    let mut clamped = Vec::new();
    write_layer(
        src.path(),
        &[],
        &mut clamped,
        WriteOptions {
            source_date_epoch: Some(1000),
        },
    )
    .unwrap();
    let mut archive = tar::Archive::new(clamped.as_slice());
    let entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(entry.header().mtime().unwrap(), 1000);
}

#[test]
fn stored_layers_are_plain_tars_and_compress_once() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), "hello").unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let content = kiln_cache::ContentStore::open(store_dir.path()).unwrap();
    let blob = store_layer(src.path(), &[], &content, WriteOptions::default()).unwrap();
    let tar = content.read(&blob.digest).unwrap();
    assert_eq!(tar.len() as u64, blob.size);
    assert_eq!(kiln_cache::Digest::of(&tar), blob.diff_id);
    assert_eq!(blob.digest, blob.diff_id);
    assert_eq!(blob.media_type, "application/vnd.oci.image.layer.v1.tar");

    let memo = kiln_cache::CacheIndexStore::new(store_dir.path().join("memo.redb"));
    fs::write(src.path().join("a"), "another layer").unwrap();
    let other = store_layer(src.path(), &[], &content, WriteOptions::default()).unwrap();
    let both = recompress_all(
        &content,
        &[blob.clone(), other.clone()],
        LayerCompression::Gzip,
        &memo,
    )
    .unwrap();
    let [gzip, other_gzip] = <[LayerBlob; 2]>::try_from(both).unwrap();
    assert_eq!(
        other_gzip.diff_id, other.diff_id,
        "results keep the layers' order"
    );
    assert_eq!(gzip.diff_id, blob.diff_id);
    assert_eq!(
        gzip.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(content.read(&gzip.digest).unwrap().as_slice()),
        &mut unpacked,
    )
    .unwrap();
    assert_eq!(unpacked, tar);
    // The second time the memo answers, and a compressed layer is already what gzip
    // asks for.
    let again = recompress_all(
        &content,
        &[blob, gzip.clone()],
        LayerCompression::Gzip,
        &memo,
    );
    assert_eq!(again.unwrap(), [gzip.clone(), gzip]);
}

/// A tar entry with a raw (unchecked) name.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    link: &str,
    data: &[u8],
) {
    let mut header = Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

fn apply_hostile(
    entries: &[(&str, EntryType, &str)],
) -> (anyhow::Result<ApplyStats>, tempfile::TempDir) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let data: &[u8] = if *kind == EntryType::Regular {
            b"pwned"
        } else {
            b""
        };
        raw_entry(&mut tar, name, *kind, link, data);
    }
    let bytes = tar.into_inner().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    fs::create_dir(sandbox.path().join("layer")).unwrap();
    let result = apply_tar(&bytes, &sandbox.path().join("layer"));
    (result, sandbox)
}

#[test]
fn hostile_tars_cannot_write_outside_the_layer() {
    let cases: Vec<Vec<(&str, EntryType, &str)>> = vec![
        vec![("../escape", EntryType::Regular, "")],
        vec![("a/../../escape", EntryType::Regular, "")],
        vec![
            ("out", EntryType::Symlink, ".."),
            ("out/escape", EntryType::Regular, ""),
        ],
        vec![
            ("out", EntryType::Symlink, "/"),
            ("out/escape", EntryType::Regular, ""),
        ],
        vec![("link", EntryType::Link, "../escape")],
        vec![
            ("out", EntryType::Symlink, ".."),
            ("link", EntryType::Link, "out/layer-sibling"),
        ],
        vec![
            ("out", EntryType::Symlink, ".."),
            ("out/.wh.layer-sibling", EntryType::Regular, ""),
        ],
        vec![(".wh...", EntryType::Regular, "")],
        vec![("d/.wh..", EntryType::Regular, "")],
    ];
    for case in cases {
        let (result, sandbox) = apply_hostile(&case);
        let message = format!("{:#}", result.expect_err(&format!("{case:?} must fail")));
        assert!(message.contains("tar entry"), "{message}");
        let mut outside: Vec<_> = fs::read_dir(sandbox.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        outside.sort();
        assert_eq!(outside, ["layer"], "{case:?} wrote outside the layer");
    }
}

#[test]
fn absolute_names_are_relative_to_the_layer() {
    let (result, sandbox) = apply_hostile(&[("/etc/evil", EntryType::Regular, "")]);
    result.unwrap();
    assert_eq!(
        fs::read(sandbox.path().join("layer/etc/evil")).unwrap(),
        b"pwned"
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let out = tempfile::tempdir().unwrap();
    assert!(apply_tar(&[0x1f, 0x8b, 1, 2, 3], out.path()).is_err());
    assert!(
        apply_tar(
            &b"not a tar at all, just text that goes on"[..].repeat(20)[..],
            out.path()
        )
        .is_err()
    );
}

#[test]
fn a_layer_must_be_what_its_digests_claim() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("file"), "content").unwrap();
    let mut tar = Vec::new();
    write_layer(src.path(), &[], &mut tar, WriteOptions::default()).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    let blob = gzip.finish().unwrap();
    let honest = layer_of(&blob, &tar);

    let out = tempfile::tempdir().unwrap();
    apply_layer(blob.as_slice(), out.path(), &honest).unwrap();
    assert_eq!(fs::read(out.path().join("file")).unwrap(), b"content");

    let other = Digest::of(b"another layer");
    let lying = LayerBlob {
        diff_id: other,
        ..honest.clone()
    };
    let message = format!(
        "{:#}",
        apply_layer(blob.as_slice(), tempfile::tempdir().unwrap().path(), &lying).unwrap_err()
    );
    assert!(
        message.contains("not what the image claims")
            && message.contains(&Digest::of(&tar).to_string()),
        "{message}"
    );

    let corrupt = LayerBlob {
        digest: other,
        ..honest
    };
    let message = format!(
        "{:#}",
        apply_layer(
            blob.as_slice(),
            tempfile::tempdir().unwrap().path(),
            &corrupt
        )
        .unwrap_err()
    );
    assert!(message.contains("the blob is corrupt"), "{message}");
}

/// The entry names of an uncompressed tar.
fn entry_names(tar: &[u8]) -> Vec<String> {
    tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn directories_only_copied_up_are_left_out() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    fs::create_dir(lower.path().join("etc")).unwrap();
    fs::create_dir(lower.path().join("var")).unwrap();
    fs::create_dir(upper.path().join("etc")).unwrap();
    fs::write(upper.path().join("etc/new"), "x").unwrap();
    fs::create_dir(upper.path().join("var")).unwrap();
    let old = filetime::FileTime::from_unix_time(1_000_000, 0);
    for dir in [lower.path().join("etc"), upper.path().join("etc")] {
        filetime::set_file_mtime(&dir, old).unwrap();
    }
    // var/ differs from below (its mtime), so it is a change.
    filetime::set_file_mtime(lower.path().join("var"), old).unwrap();

    let mut tar = Vec::new();
    let lowers = [lower.path().to_path_buf()];
    write_layer(upper.path(), &lowers, &mut tar, WriteOptions::default()).unwrap();
    assert_eq!(entry_names(&tar), ["etc/new", "var/"]);

    // Without the layers below, every directory is written.
    let mut tar = Vec::new();
    write_layer(upper.path(), &[], &mut tar, WriteOptions::default()).unwrap();
    assert_eq!(entry_names(&tar), ["etc/", "etc/new", "var/"]);
}

#[test]
fn empty_copy_ups_are_pruned_so_the_directory_holds_what_the_tar_holds() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    let old = filetime::FileTime::from_unix_time(1_000_000, 0);
    // Copied up and emptied again (a mount point's parent): etc/, usr/ and usr/lib/;
    // etc/ssl/ changed (its mtime); var/ holds a new file.
    for root in [lower.path(), upper.path()] {
        for dir in ["etc/ssl", "usr/lib", "var"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
    }
    fs::write(upper.path().join("var/new"), "x").unwrap();
    for root in [lower.path(), upper.path()] {
        for dir in ["etc", "etc/ssl", "usr", "usr/lib", "var"] {
            filetime::set_file_mtime(root.join(dir), old).unwrap();
        }
    }
    filetime::set_file_mtime(lower.path().join("etc/ssl"), filetime::FileTime::zero()).unwrap();
    let lowers = [lower.path().to_path_buf()];
    let mut tar = Vec::new();
    write_layer(upper.path(), &lowers, &mut tar, WriteOptions::default()).unwrap();
    assert_eq!(entry_names(&tar), ["etc/ssl/", "var/new"]);

    prune_copy_ups(upper.path(), &lowers).unwrap();
    assert_eq!(
        describe(upper.path())
            .iter()
            .map(|line| line.split_whitespace().next().unwrap())
            .collect::<Vec<_>>(),
        ["etc", "etc/ssl", "var", "var/new"]
    );
    // What stays keeps its times, so it is still left out of a tar written again.
    let mut again = Vec::new();
    write_layer(upper.path(), &lowers, &mut again, WriteOptions::default()).unwrap();
    assert_eq!(again, tar);
}
