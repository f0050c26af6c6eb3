//! Hard links instead of copies for `COPY --from`: a regular file that a copy would
//! reproduce unchanged (same owner, mode, mtime, no xattrs) is linked from the immutable
//! layer directory that holds it straight into the destination's upper directory. That
//! saves allocating an inode and copying the data; it is safe because layer directories
//! are never written once installed, and overlayfs copies a lower file up before any
//! change.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::Item;

/// Links files from a stack of unpacked layers into an overlay's upper directory.
///
/// Writing to the upper directory bypasses the mounted overlay, which may then hold stale
/// lookups: once [`linked_any`](Self::linked_any) is true, remount before reading the
/// destination through its mount again.
#[derive(Debug)]
pub struct LayerLinker<'a> {
    /// The layers the source tree is merged from, top first.
    layers: &'a [PathBuf],
    /// The mounted source tree (item host paths are under it).
    source_root: &'a Path,
    /// The mounted destination filesystem (copy targets are under it).
    rootfs: &'a Path,
    /// The destination overlay's upper directory.
    upper: &'a Path,
    /// Whether any file was linked.
    linked: AtomicBool,
}

impl<'a> LayerLinker<'a> {
    /// A linker from the tree mounted at `source_root` over `layers` (top first) to the
    /// overlay mounted at `rootfs` with upper directory `upper`.
    pub fn new(
        layers: &'a [PathBuf],
        source_root: &'a Path,
        rootfs: &'a Path,
        upper: &'a Path,
    ) -> Self {
        Self {
            layers,
            source_root,
            rootfs,
            upper,
            linked: AtomicBool::new(false),
        }
    }

    /// Whether any file was linked, so the destination mount may be stale.
    pub fn linked_any(&self) -> bool {
        self.linked.load(Ordering::Relaxed)
    }

    /// Links the regular file `item` at `target` (a path under the destination mount)
    /// if its layer copy can be shared; false means it must be copied instead. The caller
    /// has checked that the copy would keep owner and mode. Files with several names are
    /// always copied, so that their other names can be linked through the mount.
    pub fn link(&self, item: &Item, target: &Path) -> bool {
        if item.meta.nlink() != 1 {
            return false;
        }
        let (Some(real), Some(upper_target)) = (self.layer_file(item), self.free_in_upper(target))
        else {
            return false;
        };
        if fs::hard_link(real, upper_target).is_err() {
            return false;
        }
        self.linked.store(true, Ordering::Relaxed);
        true
    }

    /// Where the file the source mount shows as `item` really is: the topmost layer
    /// holding its path, checked to be the same inode and free of xattrs (overlayfs keeps
    /// its own there, and they must not travel to another layer).
    fn layer_file(&self, item: &Item) -> Option<PathBuf> {
        let rel = item.host.strip_prefix(self.source_root).ok()?;
        for layer in self.layers {
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

    /// `target`'s path in the upper directory, if its parent directory is there and
    /// nothing (not even a whiteout) is at the name itself.
    fn free_in_upper(&self, target: &Path) -> Option<PathBuf> {
        let upper = self.upper.join(target.strip_prefix(self.rootfs).ok()?);
        let parent_is_dir = upper
            .parent()
            .and_then(|p| fs::symlink_metadata(p).ok())
            .is_some_and(|m| m.is_dir());
        let free =
            matches!(fs::symlink_metadata(&upper), Err(e) if e.kind() == ErrorKind::NotFound);
        (parent_is_dir && free).then_some(upper)
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

    /// Copies `/app` of [`layers`] with a linker, and checks it through the remounted
    /// destination.
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
        };
        let action = CopyAction {
            chown,
            ..CopyAction::new(0, "/app", "/app")
        };
        let linker = LayerLinker::new(
            source.lowers(),
            source.rootfs(),
            dest.rootfs(),
            dest.upper(),
        );
        copy(&tree, &action, dest.rootfs(), Some(&linker)).unwrap();
        assert!(linker.linked_any());
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
}
