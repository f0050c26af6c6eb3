//! A sender and a receiver wired to each other in memory.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::Path;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

/// Sends `from` (with `selection`) into `to`; returns what the receiver counted.
async fn transfer(from: &Path, selection: &Selection, to: &Path) -> anyhow::Result<ReceiveStats> {
    let (to_receiver, from_sender) = mpsc::channel(16);
    let (to_sender, from_receiver) = mpsc::channel(16);
    let sending = send(
        from,
        selection,
        ReceiverStream::new(from_receiver).map(Ok),
        to_receiver,
    );
    let receiving = receive(to, ReceiverStream::new(from_sender).map(Ok), to_sender);
    let (sent, received) = tokio::join!(sending, receiving);
    sent?;
    received
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("src/deep")).unwrap();
    fs::write(root.join("src/main.rs"), "fn main() {}").unwrap();
    fs::write(root.join("src/deep/data.bin"), vec![7u8; 200_000]).unwrap();
    fs::write(root.join("README"), "read me").unwrap();
    fs::write(root.join("secret.env"), "KEY=1").unwrap();
    symlink("src/main.rs", root.join("link")).unwrap();
    fs::hard_link(root.join("README"), root.join("README.again")).unwrap();
}

#[tokio::test]
async fn a_directory_arrives_whole_then_only_what_changed() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let dest = to.path().join("copy");
    tree(from.path());
    let selection = Selection {
        excludes: vec!["*.env".into()],
        includes: Vec::new(),
    };
    let first = transfer(from.path(), &selection, &dest).await.unwrap();
    assert_eq!(first.files_requested, 3, "{first:?}");
    assert_eq!(
        fs::read(dest.join("src/deep/data.bin")).unwrap().len(),
        200_000
    );
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("src/main.rs")
    );
    assert_eq!(
        fs::metadata(dest.join("README")).unwrap().ino(),
        fs::metadata(dest.join("README.again")).unwrap().ino()
    );
    assert!(
        !dest.join("secret.env").exists(),
        "excluded files stay behind"
    );
    let mtime = |p: &Path| fs::metadata(p).unwrap().mtime();
    assert_eq!(
        mtime(&dest.join("src/main.rs")),
        mtime(&from.path().join("src/main.rs"))
    );

    let again = transfer(from.path(), &selection, &dest).await.unwrap();
    assert_eq!((again.files_requested, again.bytes), (0, 0), "{again:?}");

    fs::write(from.path().join("src/main.rs"), "fn main() { changed() }").unwrap();
    fs::remove_file(from.path().join("README.again")).unwrap();
    let changed = transfer(from.path(), &selection, &dest).await.unwrap();
    assert_eq!(changed.files_requested, 1, "{changed:?}");
    assert_eq!(changed.bytes, 23);
    assert_eq!(
        fs::read_to_string(dest.join("src/main.rs")).unwrap(),
        "fn main() { changed() }"
    );
    assert!(!dest.join("README.again").exists(), "deleted on the sender");
}

#[tokio::test]
async fn includes_send_only_what_they_name_and_the_way_there() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    tree(from.path());
    let selection = Selection {
        excludes: Vec::new(),
        includes: vec!["src/main.rs".into()],
    };
    transfer(from.path(), &selection, to.path()).await.unwrap();
    let mut names: Vec<String> = walk_names(to.path());
    names.sort();
    assert_eq!(names, ["src", "src/main.rs"]);
}

fn walk_names(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    send::walk(root, &Selection::default(), &mut |(stat, _)| {
        names.push(stat.path);
        Ok(())
    })
    .unwrap();
    names
}

#[tokio::test]
async fn a_hostile_sender_cannot_write_outside_the_directory() {
    use crate::fsutil::Stat;
    use crate::fsutil::packet::PacketType;
    let to = tempfile::tempdir().unwrap();
    let dest = to.path().join("copy");
    for listing in [
        vec![("../escape", 0o644)],
        vec![("/etc/escape", 0o644)],
        // A symlink, then a file "inside" it.
        vec![("out", 0x0800_01ff), ("out/escape", 0o644)],
    ] {
        let (tx, rx) = mpsc::channel(16);
        for (path, mode) in &listing {
            let stat = Stat {
                path: path.to_string(),
                mode: *mode,
                linkname: "..".into(),
                ..Stat::default()
            };
            tx.send(packet(PacketType::PacketStat, 0, Vec::new(), Some(stat)))
                .await
                .unwrap();
        }
        tx.send(packet(PacketType::PacketStat, 0, Vec::new(), None))
            .await
            .unwrap();
        let (back, _keep) = mpsc::channel(16);
        let err = receive(&dest, ReceiverStream::new(rx).map(Ok), back)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("the sender listed"), "{err:#}");
        assert!(!to.path().join("escape").exists());
    }
}
