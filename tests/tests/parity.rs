//! Images as BuildKit v0.32 builds them, through the real binary. Each expectation is
//! BuildKit's documented or observable behaviour, read in its source (dockerfile2llb's
//! dispatchers, fsutil's copy, the executor's user setup, containerd's tar writer); the
//! comments name where.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tests::{kiln, run, state_with_busybox};

/// A state directory with `busybox:1` loaded and a build context.
struct Build {
    root: tempfile::TempDir,
    context: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Build {
    /// `kiln --root STATE`, ready for a subcommand.
    fn kiln(&self) -> Command {
        let mut command = kiln();
        command.arg("--root").arg(self.root.path());
        command
    }

    fn new(dockerfile: &str) -> Self {
        let root = state_with_busybox();
        let context = tempfile::tempdir().unwrap();
        fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        Build {
            root,
            context,
            out: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.context.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        path
    }

    /// Builds into `rootfs/` (a local export) and `image/` (the OCI layout).
    fn build(&self) -> Image {
        let rootfs = self.out.path().join("rootfs");
        let archive = self.out.path().join("image.tar");
        let metadata = self.out.path().join("metadata.json");
        run(
            self.kiln()
                .arg("build")
                .arg("-o")
                .arg(format!("type=local,dest={}", rootfs.display()))
                .arg("-o")
                .arg(format!("type=oci,dest={}", archive.display()))
                .arg("--metadata-file")
                .arg(&metadata)
                .arg(self.context.path()),
            true,
        );
        let layout = self.out.path().join("image");
        fs::create_dir_all(&layout).unwrap();
        run(
            Command::new("tar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&layout),
            true,
        );
        let image = Image { rootfs, layout };
        // The digest reported is the archive's manifest, as BuildKit reports it.
        let metadata: serde_json::Value =
            serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(image.layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            metadata["containerimage.digest"],
            index["manifests"][0]["digest"]
        );
        image
    }
}

impl Build {
    /// Builds, expecting failure; returns what kiln printed.
    fn build_err(&self) -> String {
        let out = run(self.kiln().arg("build").arg(self.context.path()), false);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A built image: its local export and its OCI layout.
struct Image {
    rootfs: PathBuf,
    layout: PathBuf,
}

impl Image {
    fn blob(&self, digest: &serde_json::Value) -> Vec<u8> {
        let digest = digest.as_str().unwrap().trim_start_matches("sha256:");
        fs::read(self.layout.join("blobs/sha256").join(digest)).unwrap()
    }

    fn manifest(&self) -> serde_json::Value {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.layout.join("index.json")).unwrap()).unwrap();
        serde_json::from_slice(&self.blob(&index["manifests"][0]["digest"])).unwrap()
    }

    fn config(&self) -> serde_json::Value {
        serde_json::from_slice(&self.blob(&self.manifest()["config"]["digest"])).unwrap()
    }

    fn history(&self) -> Vec<String> {
        self.config()["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["created_by"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every entry of every layer: path and its xattr names (from PAX records).
    fn layer_xattrs(&self) -> Vec<(String, Vec<String>)> {
        let mut entries = Vec::new();
        for layer in self.manifest()["layers"].as_array().unwrap() {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(self.blob(&layer["digest"]).as_slice())
                .read_to_end(&mut tar)
                .unwrap();
            let mut archive = tar::Archive::new(tar.as_slice());
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let path = entry.path().unwrap().display().to_string();
                let names = match entry.pax_extensions().unwrap() {
                    Some(records) => records
                        .filter_map(|r| {
                            r.unwrap()
                                .key()
                                .ok()?
                                .strip_prefix("SCHILY.xattr.")
                                .map(str::to_string)
                        })
                        .collect(),
                    None => Vec::new(),
                };
                entries.push((path, names));
            }
        }
        entries
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.rootfs.join(rel)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    /// `(mode & 07777, uid, gid)` of a path, symlinks not followed.
    fn stat(&self, rel: &str) -> (u32, u32, u32) {
        let meta = fs::symlink_metadata(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
    }
}

/// Config and history as dockerfile2llb writes them.
#[test]
fn config_and_history_match_buildkit() {
    let build = Build::new(
        "FROM busybox:1 AS base\n\
         ARG FLAVOUR=plain\n\
         ARG UNSET\n\
         FROM base\n\
         ARG DEST=/opt\n\
         ENV FROM_ARG=$FLAVOUR\n\
         LABEL flavour=$FLAVOUR\n\
         RUN echo \"$FLAVOUR\" > /flavour\n\
         COPY a.txt $DEST/\n\
         RUN <<EOF\n\
         #!/bin/sh\n\
         echo \"shebang via $0\" > /script\n\
         EOF\n\
         ENTRYPOINT exec app\n\
         EXPOSE 80 443/udp\n\
         EXPOSE 8080\n\
         HEALTHCHECK --interval=30s --retries=3 CMD wget -q localhost\n\
         ONBUILD RUN echo child\n\
         WORKDIR /srv/\n",
    );
    build.file("a.txt", b"a\n");
    let image = build.build();
    let config = image.config();
    let c = &config["config"];
    assert_eq!(
        c["WorkingDir"], "/srv/",
        "an absolute WORKDIR is kept as written"
    );
    assert_eq!(
        c["Labels"]["flavour"], "plain",
        "ARG values carry into FROM <stage>"
    );
    assert!(
        c["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("FROM_ARG=plain")),
        "{c}"
    );
    assert_eq!(image.read("flavour"), "plain\n");
    assert_eq!(image.read("opt/a.txt"), "a\n");
    assert_eq!(image.read("script"), "shebang via /dev/pipes/EOF\n");
    let history = image.history();
    let ours: Vec<&str> = history.iter().skip(2).map(String::as_str).collect();
    assert_eq!(
        ours,
        [
            "ARG FLAVOUR=plain",
            "ARG UNSET",
            "ARG DEST=/opt",
            "ENV FROM_ARG=plain",
            "LABEL flavour=plain",
            "RUN |3 FLAVOUR=plain UNSET= DEST=/opt /bin/sh -c echo \"$FLAVOUR\" > /flavour # buildkit",
            "COPY a.txt /opt/ # buildkit",
            "RUN |3 FLAVOUR=plain UNSET= DEST=/opt /bin/sh -c /dev/pipes/EOF # buildkit",
            "ENTRYPOINT [\"/bin/sh\" \"-c\" \"exec app\"]",
            "EXPOSE [443/udp 80/tcp]",
            "EXPOSE [8080/tcp]",
            "HEALTHCHECK {Test:[CMD-SHELL wget -q localhost] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}",
            "WORKDIR /srv/",
        ]
    );

    // FROM scratch starts from BuildKit's empty image, whose WorkingDir is "/".
    fs::write(
        build.context.path().join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /\n",
    )
    .unwrap();
    assert_eq!(build.build().config()["config"]["WorkingDir"], "/");
}

/// Owners, modes and links as BuildKit's file ops and executor make them.
#[test]
fn owners_modes_groups_and_links_match_buildkit() {
    let build = Build::new(
        "FROM busybox:1\n\
         RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \\\n\
          && printf 'app:x:1000:\\nextra:x:2000:app\\nother:x:3000:app,root\\n' >> /etc/group \\\n\
          && echo old > /target-file && ln -s /target-file /link && mkdir -m 1777 /out\n\
         COPY --chown=4242 f.txt /uid-only\n\
         COPY --chmod=700 f.txt /made/deeper/\n\
         COPY --chmod=751 d /newdir\n\
         COPY f.txt /link\n\
         RUN grep Groups /proc/self/status > /out/root\n\
         USER app\n\
         RUN grep Groups /proc/self/status > /out/app\n\
         USER 1000:1000\n\
         RUN grep Groups /proc/self/status > /out/ids\n\
         USER nosuchuser\n\
         WORKDIR /made-by-workdir\n",
    );
    build.file("f.txt", b"new\n");
    build.file("d/g.txt", b"g\n");
    let image = build.build();
    // fsutil: a uid alone is also the group (llb.WithUser, readUser).
    assert_eq!(image.stat("uid-only"), (0o644, 4242, 4242));
    // fsutil's MkdirAll makes the directories on the way with the octal --chmod.
    assert_eq!(image.stat("made"), (0o700, 0, 0));
    assert_eq!(image.stat("made/deeper"), (0o700, 0, 0));
    assert_eq!(image.stat("made/deeper/f.txt"), (0o700, 0, 0));
    assert_eq!(image.stat("newdir"), (0o751, 0, 0));
    assert_eq!(image.stat("newdir/g.txt"), (0o751, 0, 0));
    // The destination is resolved through symlinks: the link stays, its target is written.
    assert_eq!(
        fs::read_link(image.path("link")).unwrap(),
        Path::new("/target-file")
    );
    assert_eq!(image.read("target-file"), "new\n");
    // The executor gives the primary group first, then /etc/group's memberships.
    let groups = |name: &str| image.read(&format!("out/{name}")).trim().to_string();
    assert_eq!(groups("root"), "Groups:\t0 3000");
    assert_eq!(groups("app"), "Groups:\t1000 2000 3000");
    assert_eq!(groups("ids"), "Groups:\t1000");
    // WORKDIR's mkdir for an unknown USER is root's, not an error.
    assert_eq!(image.stat("made-by-workdir"), (0o755, 0, 0));
    assert_eq!(image.config()["config"]["User"], "nosuchuser");
}

/// Archives and xattrs as BuildKit treats them: ADD follows the archive's own symlinks and
/// skips pax global headers (moby's go-archive); layers carry only file capabilities
/// (containerd's tar writer).
#[test]
fn archives_and_xattrs_match_buildkit() {
    let build = Build::new(
        "FROM busybox:1\n\
         ADD bundle.tar /unpacked/\n\
         COPY noted.txt /noted.txt\n\
         COPY ./app/n\\?pe/file.txt /escaped/file.txt\n",
    );
    let noted = build.file("noted.txt", b"noted\n");
    let xattrs_work = xattr::set(&noted, "user.note", b"context").is_ok();
    build.file("app/n?pe/file.txt", b"literal\n");
    build.file("app/nope/file.txt", b"last match\n");

    let mut tar = tar::Builder::new(Vec::new());
    let records = b"22 comment=kiln tests\n";
    let mut global = tar::Header::new_ustar();
    global.set_entry_type(tar::EntryType::XGlobalHeader);
    global.set_path("pax_global_header").unwrap();
    global.set_size(records.len() as u64);
    global.set_cksum();
    tar.append(&global, &records[..]).unwrap();
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, "real/", std::io::empty())
        .unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    tar.append_link(&mut link, "alias", "real").unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o644);
    file.set_size(6);
    tar.append_data(&mut file, "alias/inside", &b"piped\n"[..])
        .unwrap();
    build.file("bundle.tar", &tar.into_inner().unwrap());

    let image = build.build();
    assert_eq!(image.read("unpacked/real/inside"), "piped\n");
    assert_eq!(
        fs::read_link(image.path("unpacked/alias")).unwrap(),
        Path::new("real")
    );
    // `n\?pe` expands to the wildcard `n?pe`, which matches both directories; BuildKit
    // copies each match in turn onto the file destination, so the last one stays.
    assert_eq!(image.read("escaped/file.txt"), "last match\n");
    if xattrs_work {
        let entries = image.layer_xattrs();
        let (_, names) = entries
            .iter()
            .find(|(path, _)| path == "noted.txt")
            .expect("noted.txt is in a layer");
        assert!(
            names.is_empty(),
            "user xattrs stay out of layers: {names:?}"
        );
    }
}

/// What a COPY finds in the context and cache mounts, as BuildKit: an ignored directory is
/// sent for what an exception brings back inside it; a wildcard matching nothing makes no
/// destination; cache mounts with other owners are other caches.
#[test]
fn context_selection_and_cache_mounts_match_buildkit() {
    let build = Build::new(
        "FROM busybox:1\n\
         COPY folder1 /f1\n\
         COPY missing* /nothing/\n\
         RUN --mount=type=cache,target=/c,uid=1000 touch /c/owned-by-1000\n\
         RUN --mount=type=cache,target=/c ls /c > /default-cache\n",
    );
    build.file(".dockerignore", b"**\n!folder1/file1\n");
    build.file("folder1/file1", b"one\n");
    build.file("folder1/file2", b"two\n");
    let image = build.build();
    assert_eq!(image.read("f1/file1"), "one\n");
    assert!(!image.path("f1/file2").exists());
    assert!(!image.path("nothing").exists());
    assert_eq!(image.read("default-cache"), "");
}

/// Hard links and special files as the image holds them: names one layer links stay
/// linked, a COPY --from never links its copy to the source, and FIFOs are exported
/// (fsutil copies them).
#[test]
fn hard_links_and_fifos_match_buildkit() {
    let build = Build::new(
        "FROM busybox:1 AS src\n\
         RUN echo a > /a && ln /a /a-link && echo c > /c && mkfifo /pipe\n\
         FROM src\n\
         COPY --from=src /a /b\n\
         COPY --from=src /c /d\n\
         COPY --from=src / /whole/\n",
    );
    let image = build.build();
    let inode = |rel: &str| fs::symlink_metadata(image.path(rel)).unwrap().ino();
    assert_eq!(inode("a"), inode("a-link"), "one layer links them");
    assert_ne!(inode("a"), inode("b"), "a copy is a file of its own");
    assert_ne!(inode("c"), inode("d"), "a copy is a file of its own");
    assert_ne!(inode("a"), inode("whole/a"));
    assert_eq!(inode("whole/a"), inode("whole/a-link"));
    use std::os::unix::fs::FileTypeExt as _;
    assert!(
        fs::symlink_metadata(image.path("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(image.path("whole/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// The diff_id of a layer without entries (1,024 zero bytes).
const EMPTY_LAYER_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// What a RUN step leaves: BuildKit removes the mount points of the step's own mounts
/// (`/etc/hosts`, `/etc/resolv.conf`, its binds; executor/stubs.go) but not those runc
/// makes for `/proc`, `/dev` and `/sys`. A layer holds only what its tar holds, so an
/// empty layer made by a step (with `/etc` copied up for the hosts mount point) is still
/// empty where a later image shares it.
#[test]
fn run_steps_leave_the_mount_points_buildkit_leaves() {
    let mut build = Build::new("FROM busybox:1\nRUN true\nRUN true\n");
    let image = build.build();
    for dir in ["dev", "proc", "sys"] {
        assert_eq!(image.stat(dir), (0o755, 0, 0), "{dir}");
        assert_eq!(fs::read_dir(image.path(dir)).unwrap().count(), 0, "{dir}");
    }
    for stub in ["etc/hosts", "etc/resolv.conf"] {
        assert!(!image.path(stub).exists(), "{stub}");
    }
    // The second step changed nothing: an empty layer (an empty tar's diff_id).
    let config = image.config();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.last().unwrap(), EMPTY_LAYER_DIFF_ID);

    build.file("Dockerfile", b"FROM scratch\nCOPY empty/ /\n");
    fs::create_dir(build.context.path().join("empty")).unwrap();
    build.out = tempfile::tempdir().unwrap();
    let image = build.build();
    assert_eq!(
        image.config()["rootfs"]["diff_ids"],
        serde_json::json!([EMPTY_LAYER_DIFF_ID])
    );
    let exported: Vec<_> = fs::read_dir(&image.rootfs).unwrap().collect();
    assert!(exported.is_empty(), "{exported:?}");
}

/// Copying a directory merges it with what is there, as fsutil's copy does: the
/// destination itself is resolved through symlinks, but below it a directory meets only
/// a directory (not a file, not a symlink to one) and a file never replaces a directory.
#[test]
fn copies_meet_existing_paths_as_buildkit() {
    let base = "FROM busybox:1\n\
                RUN mkdir -p /real /x/dir && ln -s real /lnk && echo old > /x/file && \\\n\
                \x20   ln -s /etc/passwd /x/link\n";
    let build = Build::new(&format!("{base}COPY tree/ /lnk/\nCOPY tree/ /x/\n"));
    build.file("tree/file", b"new\n");
    build.file("tree/link", b"no link\n");
    let image = build.build();
    assert_eq!(image.read("real/file"), "new\n");
    assert_eq!(image.read("x/file"), "new\n");
    // A file replaces a symlink rather than writing through it.
    assert!(!image.path("x/link").is_symlink());
    assert_eq!(image.read("x/link"), "no link\n");
    assert!(image.read("etc/passwd").starts_with("root:"));

    let build = Build::new(&format!("{base}COPY tree/ /\n"));
    build.file("tree/lnk/file", b"x");
    let err = build.build_err();
    assert!(err.contains("cannot copy to non-directory: /lnk"), "{err}");

    let build = Build::new(&format!("{base}COPY tree/ /\n"));
    build.file("tree/x/file/inner", b"x");
    let err = build.build_err();
    assert!(
        err.contains("cannot copy to non-directory: /x/file"),
        "{err}"
    );

    let build = Build::new(&format!("{base}COPY tree/ /\n"));
    build.file("tree/x/dir", b"x");
    let err = build.build_err();
    assert!(
        err.contains("cannot replace to directory /x/dir with file"),
        "{err}"
    );
}

/// Symlinks in the build context resolve inside it, as BuildKit resolves them in its copy
/// of the context: an absolute target starts at the context's root and `..` stops there,
/// so a link to a host file finds nothing rather than the host's file.
#[test]
fn context_symlinks_resolve_inside_the_context() {
    let build = Build::new("FROM busybox:1\nCOPY absolute climbing /links/\n");
    build.file("dir/f", b"inside\n");
    std::os::unix::fs::symlink("/dir/f", build.context.path().join("absolute")).unwrap();
    std::os::unix::fs::symlink("../../dir/f", build.context.path().join("climbing")).unwrap();
    let image = build.build();
    assert_eq!(image.read("links/absolute"), "inside\n");
    assert_eq!(image.read("links/climbing"), "inside\n");

    let build = Build::new("FROM busybox:1\nCOPY host /host\n");
    std::os::unix::fs::symlink("/etc/os-release", build.context.path().join("host")).unwrap();
    let err = build.build_err();
    assert!(err.contains("\"/host\": not found"), "{err}");
}

/// A RUN step whose user is missing fails in BuildKit's words.
#[test]
fn a_missing_run_user_fails_as_in_buildkit() {
    let build = Build::new("FROM busybox:1\nUSER nobody\nWORKDIR /home/nobody\nRUN true\n");
    let err = build.build_err();
    assert!(
        err.contains(
            "process \"/bin/sh -c true\" did not complete successfully: unable to find user \
             nobody: no matching entries in passwd file"
        ),
        "{err}"
    );
}

/// A step without `HOME` gets the one runc gives (BuildKit's runtime): its uid's home in
/// `/etc/passwd`, or `/`.
#[test]
fn run_steps_get_home_as_runc_gives_it() {
    let build = Build::new(
        "FROM busybox:1\n\
         RUN mkdir -m 777 /out && echo 'u:x:1002:1002::/home/u:/bin/sh' >> /etc/passwd\n\
         USER 1002:1002\n\
         RUN echo \"$HOME\" > /out/named\n\
         USER 4242:4243\n\
         RUN echo \"$HOME\" > /out/unknown\n\
         USER root\n\
         ENV HOME=/set\n\
         RUN echo \"$HOME\" > /out/set\n",
    );
    let image = build.build();
    assert_eq!(image.read("out/named"), "/home/u\n");
    assert_eq!(image.read("out/unknown"), "/\n");
    assert_eq!(image.read("out/set"), "/set\n");
}

/// An OCI archive's index names its image as BuildKit's exporter does: the output's own
/// `name=` (one entry per name), the image's platform, and when it was exported
/// (`SOURCE_DATE_EPOCH` when given).
#[test]
fn oci_archives_index_their_image_as_buildkit() {
    let build = Build::new("FROM busybox:1\nRUN echo hi > /hi\n");
    let archive = build.out.path().join("named.tar");
    run(
        build
            .kiln()
            .args(["build", "--build-arg", "SOURCE_DATE_EPOCH=1000", "-o"])
            .arg(format!(
                "type=oci,dest={},name=app:1,name=other:2",
                archive.display()
            ))
            .arg(build.context.path()),
        true,
    );
    let index = kiln_tests::archive_index(&archive);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{index}");
    for (descriptor, (name, tag)) in manifests.iter().zip([
        ("docker.io/library/app:1", "1"),
        ("docker.io/library/other:2", "2"),
    ]) {
        assert_eq!(
            descriptor["platform"],
            serde_json::json!({"architecture": kiln_tests::host_arch(), "os": "linux"})
        );
        assert_eq!(
            descriptor["annotations"],
            serde_json::json!({
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
                "org.opencontainers.image.created": "1970-01-01T00:16:40Z",
            })
        );
    }
}

/// `COPY --parents` with nothing after the pivot (`./`, `dir/./`) fails as in BuildKit
/// v0.32, whose include pattern is then empty and matches nothing.
#[test]
fn copy_parents_without_a_pattern_fails_as_in_buildkit() {
    for (source, missing) in [("./", "\"/\": not found"), ("./x/./", "\"/x\": not found")] {
        let build = Build::new(&format!(
            "FROM busybox:1\nCOPY --parents {source} /parents/\n"
        ));
        build.file("x/a.txt", b"a");
        let err = build.build_err();
        assert!(err.contains(missing), "{source}: {err}");
    }
}

/// ADD of an archive meets existing paths as containerd's tar apply (BuildKit's unpack)
/// does, not as COPY: an entry replaces a path of another kind.
/// (Left alone: a file where the archive only implies a directory; BuildKit fails there,
/// kiln replaces it.)
#[test]
fn added_archives_replace_what_is_there() {
    let build = Build::new(
        "FROM busybox:1\nRUN mkdir -p /fileone/inner /dirone && echo old > /plain\nADD a.tar /\n",
    );
    let mut archive = tar::Builder::new(Vec::new());
    // An explicit directory entry replaces the file (with the directory only implied by
    // `plain/inside`, BuildKit fails: "not a directory").
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    archive
        .append_data(&mut dir, "plain/", std::io::empty())
        .unwrap();
    for (path, data) in [
        ("fileone", &b"file now\n"[..]),
        ("plain/inside", b"dir now\n"),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        archive.append_data(&mut header, path, data).unwrap();
    }
    build.file("a.tar", &archive.into_inner().unwrap());
    let image = build.build();
    assert_eq!(image.read("fileone"), "file now\n");
    assert_eq!(image.read("plain/inside"), "dir now\n");
}

/// `--build-arg BUILDKIT_MULTI_PLATFORM=1` makes a one-platform build's result a
/// multi-platform one, as BuildKit's frontend reads it: an index, a folder per platform.
#[test]
fn buildkit_multi_platform_makes_an_index_of_one_platform() {
    let build = Build::new("FROM busybox:1\nRUN echo hi > /hi\n");
    let archive = build.out.path().join("index.tar");
    let local = build.out.path().join("local");
    let out = run(
        build
            .kiln()
            .args(["build", "--progress", "plain"])
            .args(["--build-arg", "BUILDKIT_MULTI_PLATFORM=1", "-o"])
            .arg(format!("type=oci,dest={}", archive.display()))
            .arg("-o")
            .arg(format!("type=local,dest={}", local.display()))
            .arg(build.context.path()),
        true,
    );
    let arch = kiln_tests::host_arch();
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains(&format!("[linux/{arch} 2/2] RUN echo hi > /hi")),
        "{progress}"
    );
    let index = kiln_tests::archive_index(&archive);
    assert_eq!(
        index["manifests"][0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        fs::read_to_string(local.join(format!("linux_{arch}/hi"))).unwrap(),
        "hi\n"
    );
}

/// `--build-arg BUILDKIT_SANDBOX_HOSTNAME=NAME` names every RUN step's sandbox, its
/// hostname and its `/etc/hosts` line, as in BuildKit; the name is part of the cache key.
#[test]
fn buildkit_sandbox_hostname_names_the_sandbox() {
    let build = Build::new("FROM busybox:1\nRUN hostname > /h && cat /etc/hosts > /hosts\n");
    let build_with = |name: &str| {
        run(
            build
                .kiln()
                .args(["build", "--build-arg"])
                .arg(format!("BUILDKIT_SANDBOX_HOSTNAME={name}"))
                .arg("-o")
                .arg(format!(
                    "type=local,dest={}",
                    build.out.path().join(name).display()
                ))
                .arg(build.context.path()),
            true,
        );
        build.out.path().join(name)
    };
    for name in ["first", "second"] {
        let out = build_with(name);
        assert_eq!(
            fs::read_to_string(out.join("h")).unwrap(),
            format!("{name}\n")
        );
        assert!(
            fs::read_to_string(out.join("hosts"))
                .unwrap()
                .starts_with(&format!("127.0.0.1\tlocalhost {name}\n"))
        );
    }
}

/// Sources as fsutil copies them: a directory's destination is made even when it is
/// empty; each match of a wildcard is copied on its own, so hard links between matches
/// are not kept (within one directory they are); and through a symlink, the ignore rules
/// of where it leads apply, as in BuildKit's copy of the context.
#[test]
fn copies_treat_sources_as_fsutil_does() {
    let build = Build::new(
        "FROM busybox:1 AS s0\nRUN mkdir /e\nFROM busybox:1\n\
         COPY --from=s0 /e /empty-stage\nCOPY empty /empty-context\n\
         COPY a* /matches/\nCOPY linked/ /together/\nCOPY dlink/ /through/\n",
    );
    fs::create_dir(build.context.path().join("empty")).unwrap();
    build.file("a.txt", b"a\n");
    std::fs::hard_link(
        build.context.path().join("a.txt"),
        build.context.path().join("a-hard"),
    )
    .unwrap();
    build.file("linked/one", b"1\n");
    std::fs::hard_link(
        build.context.path().join("linked/one"),
        build.context.path().join("linked/two"),
    )
    .unwrap();
    build.file("src/sub/kept", b"k\n");
    build.file("src/sub/deep/ignored", b"i\n");
    build.file(".dockerignore", b"src/sub/deep\n");
    std::os::unix::fs::symlink("src/sub", build.context.path().join("dlink")).unwrap();
    let image = build.build();
    for dir in ["empty-stage", "empty-context"] {
        assert_eq!(image.stat(dir), (0o755, 0, 0), "{dir}");
    }
    let inode = |rel: &str| fs::symlink_metadata(image.path(rel)).unwrap().ino();
    assert_ne!(inode("matches/a.txt"), inode("matches/a-hard"));
    assert_eq!(inode("together/one"), inode("together/two"));
    assert_eq!(image.read("through/kept"), "k\n");
    assert!(!image.path("through/deep").exists());
}
