//! COPY semantics on plain directories.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use kiln_patterns::PatternMatcher;
use kiln_solver::{ChownOpt, CopyAction};

use super::*;

/// A build nobody cancels.
static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);

/// COPY as the Dockerfile frontend lowers it: wildcards on, symlinks named
/// by the source followed.
fn action(src: &str, dest: &str) -> CopyAction {
    CopyAction {
        follow_symlinks: true,
        allow_wildcard: true,
        ..CopyAction::new(0, src, dest)
    }
}

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path();
    fs::create_dir_all(c.join("src/sub")).unwrap();
    fs::write(c.join("src/main.rs"), "fn main() {}").unwrap();
    fs::write(c.join("src/sub/lib.rs"), "").unwrap();
    fs::write(c.join("src/notes.md"), "notes").unwrap();
    fs::write(c.join("a.txt"), "a").unwrap();
    fs::write(c.join("b.txt"), "b").unwrap();
    fs::write(c.join("secret.key"), "k").unwrap();
    fs::set_permissions(c.join("a.txt"), fs::Permissions::from_mode(0o751)).unwrap();
    dir
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn copy_into(
    ctx: &Path,
    ignore: &[&str],
    action: &CopyAction,
) -> anyhow::Result<tempfile::TempDir> {
    let ignore = PatternMatcher::new(ignore).unwrap();
    let tree = SourceTree {
        root: ctx,
        ignore: Some(&ignore),
        is_context: true,
        layers: &[],
    };
    let dest = tempfile::tempdir().unwrap();
    copy(
        &tree,
        action,
        dest.path(),
        None,
        &std::env::temp_dir(),
        &NOT_CANCELLED,
    )?;
    Ok(dest)
}

#[test]
fn directory_contents_wildcards_and_dockerignore() {
    let ctx = context();
    let dest = copy_into(ctx.path(), &["*.key", "src/*.md"], &action(".", "/app/")).unwrap();
    assert_eq!(
        files(dest.path()),
        [
            "app",
            "app/a.txt",
            "app/b.txt",
            "app/src",
            "app/src/main.rs",
            "app/src/sub",
            "app/src/sub/lib.rs"
        ]
    );
    let meta = fs::metadata(dest.path().join("app/a.txt")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o751, 0, 0)
    );

    let dest = copy_into(ctx.path(), &[], &action("*.txt", "/out/")).unwrap();
    assert_eq!(files(dest.path()), ["out", "out/a.txt", "out/b.txt"]);

    let dest = copy_into(ctx.path(), &[], &action("src", "/code")).unwrap();
    assert_eq!(
        files(dest.path()),
        [
            "code",
            "code/main.rs",
            "code/notes.md",
            "code/sub",
            "code/sub/lib.rs"
        ]
    );

    let err = copy_into(ctx.path(), &["*.key"], &action("secret.key", "/")).unwrap_err();
    assert_eq!(err.to_string(), "\"/secret.key\": not found");
    let err = copy_into(ctx.path(), &[], &action("*.nothing", "/")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no source files were specified"),
        "{err}"
    );
    let err = copy_into(ctx.path(), &[], &action("../outside", "/")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("forbidden path outside the build context"),
        "{err}"
    );
}

#[test]
fn file_into_existing_directory_chown_chmod_and_exclude() {
    let ctx = context();
    let dest = tempfile::tempdir().unwrap();
    fs::create_dir_all(dest.path().join("etc")).unwrap();
    fs::write(
        dest.path().join("etc/passwd"),
        "app:x:1000:1000::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(dest.path().join("etc/group"), "app:x:1000:\nstaff:x:50:\n").unwrap();
    fs::create_dir(dest.path().join("existing")).unwrap();
    let tree = SourceTree {
        root: ctx.path(),
        ignore: None,
        is_context: true,
        layers: &[],
    };
    let mut a = action("a.txt", "/existing");
    a.chown = Some(ChownOpt {
        user: "app".into(),
        group: Some("staff".into()),
    });
    a.chmod = Some("go-rwx".into());
    copy(
        &tree,
        &a,
        dest.path(),
        None,
        &std::env::temp_dir(),
        &NOT_CANCELLED,
    )
    .unwrap();
    let meta = fs::metadata(dest.path().join("existing/a.txt")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o700, 1000, 50)
    );

    let mut ex = action("src", "/src/");
    ex.exclude_patterns = vec!["*.md".into(), "sub".into()];
    copy(
        &tree,
        &ex,
        dest.path(),
        None,
        &std::env::temp_dir(),
        &NOT_CANCELLED,
    )
    .unwrap();
    assert_eq!(files(&dest.path().join("src")), ["main.rs"]);
}

#[test]
fn symlinks_never_escape() {
    let ctx = context();
    symlink("/etc/passwd", ctx.path().join("host-link")).unwrap();
    symlink("src/main.rs", ctx.path().join("inner-link")).unwrap();
    // Absolute targets and `..` resolve inside the context, as in BuildKit's copy of it.
    let err = copy_into(ctx.path(), &[], &action("host-link", "/x")).unwrap_err();
    assert!(
        err.to_string().contains("\"/host-link\": not found"),
        "{err}"
    );
    symlink("/src/main.rs", ctx.path().join("absolute-link")).unwrap();
    symlink("../../src/main.rs", ctx.path().join("climbing-link")).unwrap();
    for link in ["absolute-link", "climbing-link"] {
        let dest = copy_into(ctx.path(), &[], &action(link, "/x")).unwrap();
        assert_eq!(
            fs::read_to_string(dest.path().join("x")).unwrap(),
            "fn main() {}"
        );
    }
    let dest = copy_into(ctx.path(), &[], &action("inner-link", "/x")).unwrap();
    assert_eq!(
        fs::read_to_string(dest.path().join("x")).unwrap(),
        "fn main() {}"
    );

    // A destination symlink to an absolute path resolves inside the rootfs.
    let dest = tempfile::tempdir().unwrap();
    fs::create_dir(dest.path().join("target")).unwrap();
    symlink("/target", dest.path().join("dir")).unwrap();
    let tree = SourceTree {
        root: ctx.path(),
        ignore: None,
        is_context: true,
        layers: &[],
    };
    copy(
        &tree,
        &action("a.txt", "/dir/"),
        dest.path(),
        None,
        &std::env::temp_dir(),
        &NOT_CANCELLED,
    )
    .unwrap();
    assert!(dest.path().join("target/a.txt").exists());
}

#[test]
fn checksum_covers_only_the_selection() {
    let ctx = context();
    let tree = SourceTree {
        root: ctx.path(),
        ignore: None,
        is_context: true,
        layers: &[],
    };
    let digests = ChecksumCache::open(ctx.path().join("checksums.redb"));
    let txt = action("*.txt", "/");
    let before = checksum(&tree, &txt, &digests).unwrap();
    fs::write(ctx.path().join("src/main.rs"), "changed").unwrap();
    assert_eq!(
        checksum(&tree, &txt, &digests).unwrap(),
        before,
        "unselected change"
    );
    fs::write(ctx.path().join("b.txt"), "changed").unwrap();
    assert_ne!(
        checksum(&tree, &txt, &digests).unwrap(),
        before,
        "selected change"
    );
}

#[test]
fn many_files_and_hard_links_copy_in_parallel() {
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path().join("data");
    fs::create_dir(&dir).unwrap();
    for i in 0..200 {
        let file = dir.join(format!("f{i:03}"));
        fs::write(&file, format!("file {i}\n")).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600 + (i % 2) * 0o44)).unwrap();
    }
    fs::hard_link(dir.join("f000"), dir.join("link-a")).unwrap();
    fs::hard_link(dir.join("f000"), dir.join("link-b")).unwrap();

    let dest = copy_into(ctx.path(), &[], &action("data", "/out/")).unwrap();
    let out = dest.path().join("out");
    for i in 0..200 {
        let file = out.join(format!("f{i:03}"));
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("file {i}\n"));
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600 + (i % 2) * 0o44, "{}", file.display());
    }
    let inode = |name: &str| fs::metadata(out.join(name)).unwrap().ino();
    assert_eq!(inode("f000"), inode("link-a"));
    assert_eq!(inode("f000"), inode("link-b"));
    assert_ne!(inode("f000"), inode("f001"));
}

#[test]
fn ignored_paths_are_whole_directories_unless_an_exception_reaches_inside() {
    let ctx = tempfile::tempdir().unwrap();
    for file in [
        "keep.txt",
        "secret.txt",
        "logs/a.log",
        "logs/keep.log",
        "cache/x/y",
    ] {
        let path = ctx.path().join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }
    let ignore = PatternMatcher::new(["secret.txt", "logs", "cache", "!logs/keep.log"]).unwrap();
    assert_eq!(
        super::ignored_paths(ctx.path(), &ignore).unwrap(),
        ["cache", "logs/a.log", "secret.txt"]
    );
}

#[test]
fn a_cancelled_build_stops_copying_and_unpacking() {
    let ctx = context();
    let dest = tempfile::tempdir().unwrap();
    let tree = SourceTree {
        root: ctx.path(),
        ignore: None,
        is_context: true,
        layers: &[],
    };
    let cancelled = AtomicBool::new(true);
    let err = copy(
        &tree,
        &action(".", "/app/"),
        dest.path(),
        None,
        &std::env::temp_dir(),
        &cancelled,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "build cancelled");
}
