//! Copies that go straight into the destination overlay's upper directory, around the
//! mount: a new regular file there is the same change overlayfs would record, without
//! overlayfs's own inode, dentry and splice work for each of thousands of files.
//!
//! `COPY --from` goes further: a file that the copy would reproduce unchanged (same owner,
//! mode, mtime, no xattrs) is hard-linked from the immutable layer directory that holds it.
//! That saves allocating an inode and copying the data; it is safe because layer
//! directories are never written once installed, and overlayfs copies a lower file up
//! before any change.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::Item;

/// Writes copied files into an overlay's upper directory, linking them from the source's
/// layers where it may.
///
/// Writing to the upper directory bypasses the mounted overlay, which may then hold stale
/// lookups: once [`wrote_any`](Self::wrote_any) is true, remount before reading the
/// destination through its mount again.
#[derive(Debug)]
pub struct UpperWriter<'a> {
    /// The mounted destination filesystem (copy targets are under it).
    rootfs: &'a Path,
    /// The destination overlay's upper directory.
    upper: &'a Path,
    /// The layers a snapshot source is merged from (top first) and where it is mounted
    /// (item host paths are under it); `None` for the build context.
    source_layers: Option<(&'a [PathBuf], &'a Path)>,
    /// Whether anything was written.
    wrote: AtomicBool,
}

impl<'a> UpperWriter<'a> {
    /// A writer into the overlay mounted at `rootfs` with upper directory `upper`.
    pub fn new(rootfs: &'a Path, upper: &'a Path) -> Self {
        Self {
            rootfs,
            upper,
            source_layers: None,
            wrote: AtomicBool::new(false),
        }
    }

    /// Also links unchanged files of the snapshot mounted at `source_root` over `layers`
    /// (top first).
    pub fn linking_from(self, layers: &'a [PathBuf], source_root: &'a Path) -> Self {
        Self {
            source_layers: Some((layers, source_root)),
            ..self
        }
    }

    /// Whether anything was written, so the destination mount may be stale.
    pub fn wrote_any(&self) -> bool {
        self.wrote.load(Ordering::Relaxed)
    }

    /// Where the regular file `item` may be written for `target` (a path under the
    /// destination mount): in the upper directory, if its parent directory is there and
    /// nothing (not even a whiteout, which would mean a lower layer has the name) is at the
    /// name itself. Files with several names are left to the mount, so that their other
    /// names can be linked through it.
    pub fn claim(&self, item: &Item, target: &Path) -> Option<PathBuf> {
        if item.meta.nlink() != 1 {
            return None;
        }
        let upper = self.upper.join(target.strip_prefix(self.rootfs).ok()?);
        let parent_is_dir = upper
            .parent()
            .and_then(|p| fs::symlink_metadata(p).ok())
            .is_some_and(|m| m.is_dir());
        let free =
            matches!(fs::symlink_metadata(&upper), Err(e) if e.kind() == ErrorKind::NotFound);
        let claimed = (parent_is_dir && free).then_some(upper);
        if claimed.is_some() {
            self.wrote.store(true, Ordering::Relaxed);
        }
        claimed
    }

    /// Hard-links `item` at `upper_target` (from [`claim`](Self::claim)) if its layer copy
    /// can be shared; false means it must be copied. The caller has checked that the copy
    /// would keep owner and mode.
    pub fn link(&self, item: &Item, upper_target: &Path) -> bool {
        self.layer_file(item)
            .is_some_and(|real| fs::hard_link(real, upper_target).is_ok())
    }

    /// Where the file the source mount shows as `item` really is: the topmost layer
    /// holding its path, checked to be the same inode and free of xattrs (overlayfs keeps
    /// its own there, and they must not travel to another layer).
    fn layer_file(&self, item: &Item) -> Option<PathBuf> {
        let (layers, source_root) = self.source_layers?;
        let rel = item.host.strip_prefix(source_root).ok()?;
        for layer in layers {
            let candidate = layer.join(rel);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) => {
                    let same = meta.is_file()
                        && meta.ino() == item.meta.ino()
                        && meta.len() == item.meta.len()
                        && meta.mtime() == item.meta.mtime()
                        && meta.mtime_nsec() == item.meta.mtime_nsec();
                    let bare = xattr::list(&candidate).is_ok_and(|mut n| n.next().is_none());
                    return (same && bare).then_some(candidate);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(_) => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, lchown};

    use kiln_solver::{ChownOpt, CopyAction};

    use super::*;
    use crate::fileop::{SourceTree, copy};
    use crate::snapshot::{ActiveSnapshot, Snapshotter};

    fn ino(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().ino()
    }

    /// Two layers: `/app/a` only in the lower one, `/app/b` in both (the upper one
    /// wins), `/app/x` with an xattr, `/app/owned` owned by 7:7, `/app/twins` hard-linked.
    fn layers(dir: &Path) -> [PathBuf; 2] {
        let (lower, upper) = (dir.join("lower"), dir.join("upper"));
        fs::create_dir_all(lower.join("app")).unwrap();
        fs::create_dir_all(upper.join("app")).unwrap();
        fs::write(lower.join("app/a"), "a").unwrap();
        fs::write(lower.join("app/b"), "old b").unwrap();
        fs::write(upper.join("app/b"), "new b").unwrap();
        fs::write(upper.join("app/x"), "x").unwrap();
        xattr::set(upper.join("app/x"), "user.kiln", b"1").unwrap();
        fs::write(upper.join("app/owned"), "o").unwrap();
        lchown(upper.join("app/owned"), Some(7), Some(7)).unwrap();
        fs::write(upper.join("app/twins"), "t").unwrap();
        fs::hard_link(upper.join("app/twins"), upper.join("app/twin2")).unwrap();
        [lower, upper]
    }

    /// What a test copied: the layers, the copy's `/app` in the destination's upper
    /// directory, and the mounts and directory to drop afterwards, in that order.
    type Copied = (
        [PathBuf; 2],
        PathBuf,
        ActiveSnapshot,
        ActiveSnapshot,
        tempfile::TempDir,
    );

    /// Copies `/app` of [`layers`] with an upper writer that links, and checks it through
    /// the remounted destination.
    fn copy_app(chown: Option<ChownOpt>) -> Copied {
        let dir = tempfile::tempdir().unwrap();
        let layers = layers(dir.path());
        let snapshots = Snapshotter::open(dir.path().join("snapshots")).unwrap();
        let source = snapshots.prepare_dirs(&layers).unwrap();
        let mut dest = snapshots.prepare_dirs(&[]).unwrap();
        let tree = SourceTree {
            root: source.rootfs(),
            ignore: None,
            is_context: false,
            layers: &[],
        };
        let action = CopyAction {
            chown,
            ..CopyAction::new(0, "/app", "/app")
        };
        let upper = UpperWriter::new(dest.rootfs(), dest.upper())
            .linking_from(source.lowers(), source.rootfs());
        copy(
            &tree,
            &action,
            dest.rootfs(),
            Some(&upper),
            snapshots.scratch_root(),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        assert!(upper.wrote_any());
        dest.remount().unwrap();
        for (name, content) in [("a", "a"), ("b", "new b"), ("x", "x"), ("twin2", "t")] {
            let through_mount = fs::read_to_string(dest.rootfs().join("app").join(name));
            assert_eq!(through_mount.unwrap(), content, "/app/{name}");
        }
        let upper = dest.upper().join("app");
        (layers, upper, source, dest, dir)
    }

    #[test]
    fn unchanged_files_are_linked_from_the_layer_that_shows_them() {
        let ([lower, upper_layer], copied, _source, _dest, _dir) = copy_app(None);
        assert_eq!(ino(&copied.join("a")), ino(&lower.join("app/a")));
        assert_eq!(ino(&copied.join("b")), ino(&upper_layer.join("app/b")));
        assert_eq!(
            ino(&copied.join("owned")),
            ino(&upper_layer.join("app/owned"))
        );
        // xattrs and multiply-linked files are copied.
        assert_ne!(ino(&copied.join("x")), ino(&upper_layer.join("app/x")));
        assert_ne!(
            ino(&copied.join("twins")),
            ino(&upper_layer.join("app/twins"))
        );
        assert_eq!(ino(&copied.join("twins")), ino(&copied.join("twin2")));
    }

    #[test]
    fn only_files_whose_owner_stays_are_linked() {
        let chown = ChownOpt {
            user: "7".into(),
            group: Some("7".into()),
        };
        let ([_, upper_layer], copied, _source, _dest, _dir) = copy_app(Some(chown));
        assert_eq!(
            ino(&copied.join("owned")),
            ino(&upper_layer.join("app/owned"))
        );
        assert_ne!(ino(&copied.join("b")), ino(&upper_layer.join("app/b")));
        assert_eq!(fs::symlink_metadata(copied.join("b")).unwrap().uid(), 7);
    }

    #[test]
    fn context_files_go_into_the_upper_directory_and_replace_lower_ones() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("context");
        fs::create_dir_all(&context).unwrap();
        fs::write(context.join("new"), "new").unwrap();
        fs::write(context.join("replaced"), "from the context").unwrap();
        let lower = dir.path().join("lower");
        fs::create_dir_all(lower.join("app")).unwrap();
        fs::write(lower.join("app/replaced"), "from the layer").unwrap();
        let snapshots = Snapshotter::open(dir.path().join("snapshots")).unwrap();
        let mut dest = snapshots.prepare_dirs(&[lower]).unwrap();
        let tree = SourceTree {
            root: &context,
            ignore: None,
            is_context: true,
            layers: &[],
        };
        let upper = UpperWriter::new(dest.rootfs(), dest.upper());
        copy(
            &tree,
            &CopyAction::new(0, ".", "/app/"),
            dest.rootfs(),
            Some(&upper),
            snapshots.scratch_root(),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        assert!(upper.wrote_any());
        dest.remount().unwrap();
        let app = dest.rootfs().join("app");
        assert_eq!(fs::read_to_string(app.join("new")).unwrap(), "new");
        assert_eq!(
            fs::read_to_string(app.join("replaced")).unwrap(),
            "from the context"
        );
        assert!(dest.upper().join("app/new").is_file());
    }
}
