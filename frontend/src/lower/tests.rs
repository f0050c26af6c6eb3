use std::collections::BTreeMap;

use kiln_image::Image;
use kiln_solver::{ExecOp, FileAction, MountKind, NetworkMode, Op, Platform, SourceOp, Vertex};

use super::*;
use crate::instructions::Dockerfile;
use crate::parser::parse;

fn try_lower_with(
    src: &str,
    options: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<Lowered> {
    let doc = parse(src.as_bytes())?;
    lower(&Dockerfile::from_document(&doc)?, options, resolver)
}

fn options() -> BuildOptions {
    BuildOptions {
        target_platform: "linux/arm64".parse().unwrap(),
        build_platform: "linux/amd64".parse().unwrap(),
        ..BuildOptions::default()
    }
}

fn lower_src(src: &str) -> Lowered {
    try_lower_with(src, &options(), &EmptyConfigs).unwrap()
}

fn lower_err(src: &str) -> String {
    try_lower_with(src, &options(), &EmptyConfigs)
        .unwrap_err()
        .to_string()
}

fn vertices(l: &Lowered) -> Vec<&Vertex> {
    let d = &l.definition;
    d.topological_order()
        .iter()
        .map(|k| d.vertex(k).unwrap())
        .collect()
}

/// The image's history, `created_by` of each entry.
fn history(l: &Lowered) -> Vec<&str> {
    l.image
        .history
        .iter()
        .map(|h| h.created_by.as_str())
        .collect()
}

fn execs(l: &Lowered) -> Vec<ExecOp> {
    vertices(l)
        .into_iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn root(l: &Lowered) -> &Vertex {
    l.definition.vertex(&l.definition.root().unwrap()).unwrap()
}

#[test]
fn run_options_reach_every_exec_and_its_digest() {
    let src = "FROM busybox\nRUN --mount=type=tmpfs,target=/t true\nRUN false\n";
    let plain = lower_src(src);
    let mut with = options();
    with.run = RunOptions {
        shm_size: 128 << 20,
        ulimits: vec!["nofile=100:200".parse().unwrap()],
        extra_hosts: vec!["db=10.0.0.5".parse().unwrap()],
        network: NetworkMode::None,
    };
    let l = try_lower_with(src, &with, &EmptyConfigs).unwrap();
    for exec in execs(&l) {
        let shm = exec.mounts.last().unwrap();
        assert_eq!(
            (shm.target.as_str(), &shm.kind, shm.input),
            ("/dev/shm", &MountKind::Tmpfs { size: 128 << 20 }, None)
        );
        assert_eq!(exec.ulimits, with.run.ulimits);
        assert_eq!(exec.extra_hosts, with.run.extra_hosts);
        assert_eq!(exec.network, NetworkMode::None);
    }
    assert_ne!(root(&l).digest(), root(&plain).digest());
    for exec in execs(&plain) {
        assert!(exec.mounts.iter().all(|m| m.target != "/dev/shm"));
        assert!(exec.ulimits.is_empty() && exec.extra_hosts.is_empty());
        assert_eq!(exec.network, NetworkMode::Default);
    }
}

const MULTI: &str = "\
FROM busybox AS base
RUN echo shared

FROM busybox AS a
RUN echo shared
RUN echo a

FROM busybox AS unused
RUN echo never

FROM base AS final
COPY --from=a /a /a
RUN echo final
";

#[test]
fn shared_vertices_once_and_target_pruning() {
    let l = lower_src(MULTI);
    let images = vertices(&l)
        .iter()
        .filter(|v| matches!(v.op, Op::Source(SourceOp::Image { .. })))
        .count();
    assert_eq!(images, 1, "FROM busybox in three stages is one vertex");
    let shared = execs(&l)
        .iter()
        .filter(|e| e.args.last().unwrap() == "echo shared")
        .count();
    assert_eq!(shared, 1, "the same RUN on the same base is one vertex");
    assert!(
        execs(&l)
            .iter()
            .all(|e| e.args.last().unwrap() != "echo never")
    );
    // image, shared RUN, echo a, copy, echo final
    assert_eq!(l.definition.len(), 5);

    let mut o = options();
    o.target = Some("A".into());
    let l = try_lower_with(MULTI, &o, &EmptyConfigs).unwrap();
    assert_eq!(l.definition.len(), 3);
    let Op::Exec(e) = &root(&l).op else { panic!() };
    assert_eq!(e.args, ["/bin/sh", "-c", "echo a"]);

    o.target = Some("nope".into());
    let e = try_lower_with(MULTI, &o, &EmptyConfigs)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("target stage \"nope\" could not be found"),
        "{e}"
    );
}

#[test]
fn unreached_stage_errors_do_not_matter() {
    let l = lower_src("FROM busybox AS broken\nCOPY --from=broken a b\nFROM busybox\nRUN true\n");
    assert_eq!(l.definition.len(), 2);
}

#[test]
fn changing_a_run_changes_only_it_and_dependents() {
    let before = lower_src(MULTI);
    let after = lower_src(&MULTI.replace("echo a", "echo A"));
    let keys = |l: &Lowered| l.definition.topological_order().to_vec();
    let (b, a) = (keys(&before), keys(&after));
    let kept: Vec<_> = b.iter().filter(|d| a.contains(d)).collect();
    // The image source and the shared RUN survive; echo a, the COPY reading it and the
    // final RUN after the COPY change.
    assert_eq!(kept.len(), 2);
    assert_eq!(b.len(), a.len());
}

#[test]
fn args_scope_like_buildkit() {
    let src = "\
ARG TAG=1.0
ARG BASE=busybox:${TAG}
FROM $BASE
ARG TAG
ARG TARGETARCH
ARG LOCAL=x-${TAG}
ENV E=$LOCAL
RUN echo $TAG $TARGETARCH
";
    let l = lower_src(src);
    let image = vertices(&l)
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(SourceOp::Image {
                reference,
                platform,
            }) => Some((reference.clone(), platform.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(image.0, "busybox:1.0");
    assert_eq!(image.1, "linux/arm64".parse::<Platform>().unwrap());
    let run = &execs(&l)[0];
    assert!(run.env.contains(&"TAG=1.0".to_string()), "{:?}", run.env);
    assert!(run.env.contains(&"TARGETARCH=arm64".to_string()));
    assert!(run.env.contains(&"E=x-1.0".to_string()));
    assert_eq!(
        l.image.config.env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "E=x-1.0"
        ]
    );
    let history = history(&l);
    assert_eq!(
        history.last().unwrap(),
        &"RUN |3 TAG=1.0 TARGETARCH=arm64 LOCAL=x-1.0 /bin/sh -c echo $TAG $TARGETARCH # buildkit"
    );

    let mut o = options();
    o.build_args = BTreeMap::from([
        ("TAG".to_string(), "2.0".to_string()),
        ("UNUSED".to_string(), "1".to_string()),
        ("http_proxy".to_string(), "http://proxy:3128".to_string()),
        // Read by the builder: never "not consumed".
        ("SOURCE_DATE_EPOCH".to_string(), "0".to_string()),
        ("BUILDKIT_INLINE_CACHE".to_string(), "1".to_string()),
    ]);
    let l2 = try_lower_with(src, &o, &EmptyConfigs).unwrap();
    let run2 = &execs(&l2)[0];
    assert!(run2.env.contains(&"TAG=2.0".to_string()));
    assert!(
        !run2.env.iter().any(|e| e.starts_with("http_proxy")),
        "proxies are not in the op"
    );
    let meta = l2
        .definition
        .meta(&l2.definition.topological_order()[1])
        .unwrap();
    assert_eq!(meta.proxy_env, ["http_proxy=http://proxy:3128"]);
    assert_eq!(
        l2.warnings,
        ["one or more build args were not consumed: [UNUSED]"]
    );

    // An ARG not re-declared in the stage is not visible there.
    let l3 = lower_src("ARG V=1\nFROM busybox\nRUN echo $V\n");
    assert!(!execs(&l3)[0].env.iter().any(|e| e.starts_with("V=")));
}

#[test]
fn proxy_args_do_not_change_digests() {
    let mut o = options();
    let plain = try_lower_with("FROM busybox\nRUN true\n", &o, &EmptyConfigs).unwrap();
    o.build_args.insert("HTTPS_PROXY".into(), "http://p".into());
    let proxied = try_lower_with("FROM busybox\nRUN true\n", &o, &EmptyConfigs).unwrap();
    assert_eq!(plain.definition.root(), proxied.definition.root());
}

#[test]
fn image_config_instructions() {
    let l = lower_src(
        "FROM scratch\nCMD [\"run\"]\nENTRYPOINT [\"/app\"]\nWORKDIR app\nUSER nobody:nogroup\nLABEL a=b \"c d\"=e\n\
         EXPOSE 80 53/udp 8000-8001\nVOLUME /data\nSTOPSIGNAL SIGINT\nSHELL [\"/bin/bash\", \"-c\"]\n\
         HEALTHCHECK --interval=5s CMD true\nONBUILD RUN echo child\nMAINTAINER me\n",
    );
    let c = &l.image.config;
    assert_eq!(
        c.cmd.as_deref(),
        Some(&["run".to_string()][..]),
        "CMD set in the stage survives ENTRYPOINT"
    );
    assert_eq!(c.entrypoint.as_deref(), Some(&["/app".to_string()][..]));
    assert!(c.args_escaped);
    assert_eq!(c.working_dir, "/app");
    assert_eq!(c.user, "nobody:nogroup");
    assert_eq!(c.labels["c d"], "e");
    let ports: Vec<&String> = c.exposed_ports.keys().collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
    assert!(c.volumes.contains_key("/data"));
    assert_eq!(c.stop_signal, "SIGINT");
    assert_eq!(
        c.shell.as_deref(),
        Some(&["/bin/bash".to_string(), "-c".to_string()][..])
    );
    assert_eq!(c.healthcheck.as_ref().unwrap().interval, 5_000_000_000);
    assert_eq!(c.on_build, ["RUN echo child"]);
    assert_eq!(l.image.author.as_deref(), Some("me"));
    assert_eq!(
        (l.image.os.as_str(), l.image.architecture.as_str()),
        ("linux", "arm64")
    );
    let history: Vec<(&str, bool)> = l
        .image
        .history
        .iter()
        .map(|h| (h.created_by.as_str(), h.empty_layer))
        .collect();
    assert_eq!(history[0], ("CMD [\"run\"]", true));
    assert_eq!(history[2], ("WORKDIR /app", false));
    assert_eq!(history[5].0, "EXPOSE [53/udp 80/tcp 8000/tcp 8001/tcp]");
    assert_eq!(
        history[9].0,
        "HEALTHCHECK {Test:[CMD-SHELL true] Interval:5s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}"
    );
    assert_eq!(
        history[10].0, "MAINTAINER me",
        "ONBUILD has no history entry"
    );
    // WORKDIR made the directory, owned by nobody (USER came later, so root here).
    let Op::File(f) = &root(&l).op else { panic!() };
    let FileAction::Mkdir(m) = &f.actions[0] else {
        panic!()
    };
    assert_eq!(
        (m.path.as_str(), m.make_parents, m.chown.is_none()),
        ("/app", true, true)
    );

    // An inherited CMD is dropped by ENTRYPOINT.
    let l = lower_src("FROM scratch AS a\nCMD [\"x\"]\nFROM a\nENTRYPOINT top -b\n");
    assert_eq!(l.image.config.cmd, None);
    assert_eq!(
        l.image.config.entrypoint.as_deref(),
        Some(&["/bin/sh".to_string(), "-c".into(), "top -b".into()][..])
    );
}

struct OnbuildImage;
impl ImageResolver for OnbuildImage {
    fn resolve_config(&self, reference: &str, _: &Platform) -> Result<Image, String> {
        if reference == "missing" {
            return Err("image \"missing\" is not in the local store".into());
        }
        let mut image = Image::default();
        image.config.env = vec!["PATH=/bin".into(), "LANG=C".into()];
        image.config.working_dir = "/srv".into();
        image.config.on_build = vec!["RUN echo triggered".into()];
        image.config.cmd = Some(vec!["sh".into()]);
        Ok(image)
    }
}

#[test]
fn base_image_config_and_onbuild_triggers() {
    let l = try_lower_with("FROM base\nRUN echo mine\n", &options(), &OnbuildImage).unwrap();
    let runs = execs(&l);
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].args.last().unwrap(), "echo triggered");
    assert_eq!(runs[0].cwd, "/srv");
    assert_eq!(runs[0].env, ["PATH=/bin", "LANG=C"]);
    assert!(
        l.image.config.on_build.is_empty(),
        "triggers run once, not inherited"
    );
    assert_eq!(l.image.config.cmd.as_deref(), Some(&["sh".to_string()][..]));
    let e = try_lower_with("FROM missing\n", &options(), &OnbuildImage).unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed to solve: missing: failed to resolve source metadata for missing: image \"missing\" is not in the local store",
        "an unreachable base is not the Dockerfile's fault"
    );
}

#[test]
fn run_heredocs_mounts_and_modes() {
    let l = lower_src("FROM busybox\nRUN <<EOF\necho one\necho two\nEOF\n");
    assert_eq!(execs(&l)[0].args, ["/bin/sh", "-c", "echo one\necho two\n"]);

    let l = lower_src("FROM busybox\nRUN <<-EOF\n\t#!/bin/sh\n\techo hi\n\tEOF\n");
    let run = &execs(&l)[0];
    assert_eq!(
        run.args,
        ["/bin/sh", "-c", "#!/bin/sh\necho hi\n"],
        "BuildKit checks the raw body for #!, so a tab-indented shebang runs inline"
    );

    let l = lower_src("FROM busybox\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n");
    let run = &execs(&l)[0];
    assert_eq!(
        run.args,
        ["/bin/sh", "-c", "/dev/pipes/EOF"],
        "BuildKit runs a shebang heredoc through the shell"
    );
    assert_eq!(run.mounts[1].target, "/dev/pipes");
    assert!(run.mounts[1].readonly);

    let l = lower_src("FROM busybox\nRUN cat <<A <<B\na\nA\nb\nB\n");
    assert_eq!(execs(&l)[0].args[2], "cat <<A <<B\na\nA\nb\nB");

    let l = lower_src(
        "FROM busybox AS deps\nRUN true\nFROM busybox\nWORKDIR /w\n\
         RUN --network=none --mount=type=cache,target=.cache --mount=type=bind,from=deps,source=/x,target=/deps \
         --mount=type=secret,id=tok --mount=type=bind,target=/ctx --mount=type=tmpfs,target=/tmp make\n",
    );
    let run = execs(&l).pop().unwrap();
    assert_eq!(run.network, NetworkMode::None);
    assert_eq!(run.cwd, "/w");
    let kinds: Vec<(&str, &MountKind)> = run
        .mounts
        .iter()
        .map(|m| (m.target.as_str(), &m.kind))
        .collect();
    assert_eq!(kinds[1].0, "/w/.cache");
    assert!(matches!(kinds[1].1, MountKind::Cache { id, .. } if id == "/w/.cache"));
    assert_eq!(run.mounts[2].source, "/x");
    assert!(run.mounts[2].input.is_some());
    assert_eq!(kinds[3].0, "/run/secrets/tok");
    assert!(matches!(
        vertices(&l)[0].op,
        Op::Source(SourceOp::Image { .. }) | Op::Source(SourceOp::Local { .. })
    ));
    assert!(matches!(kinds[5].1, MountKind::Tmpfs { .. }));

    assert!(
        lower_err("FROM busybox\nRUN --network=bridge true\n")
            .contains("unsupported network mode \"bridge\"")
    );
    assert!(
        lower_err("FROM busybox\nRUN --mount=type=cache true\n").contains("target is required")
    );
}

/// As BuildKit's llb: SSH mounts without a target are numbered among the step's SSH
/// mounts, and the first one is `SSH_AUTH_SOCK` unless the step has that variable.
#[test]
fn ssh_mounts_are_numbered_and_found_through_ssh_auth_sock() {
    let l = lower_src(
        "FROM busybox\nRUN --mount=type=tmpfs,target=/t --mount=type=ssh,id=a \
         --mount=type=ssh,id=b,uid=7,mode=0640 true\n",
    );
    let run = execs(&l).pop().unwrap();
    let targets: Vec<&str> = run.mounts.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(
        targets[2..],
        ["/run/buildkit/ssh_agent.0", "/run/buildkit/ssh_agent.1"]
    );
    assert!(matches!(
        &run.mounts[3].kind,
        MountKind::Ssh { id, required: false, mode: 0o640, uid: 7, gid: 0 } if id == "b"
    ));
    assert!(
        run.env
            .contains(&"SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0".to_string()),
        "{:?}",
        run.env
    );

    let l =
        lower_src("FROM busybox\nENV SSH_AUTH_SOCK=/mine\nRUN --mount=type=ssh,target=/s true\n");
    let run = execs(&l).pop().unwrap();
    assert!(
        !run.env.iter().any(|e| e == "SSH_AUTH_SOCK=/s"),
        "{:?}",
        run.env
    );
    assert!(
        lower_err("FROM busybox\nRUN --mount=type=ssh,source=/x true\n")
            .contains("ssh does not support source")
    );
}

#[test]
fn copy_forms() {
    let l = lower_src(
        "FROM busybox AS build\nRUN make\nFROM busybox\nWORKDIR /app\n\
         COPY --from=build --chown=app:app --chmod=0644 /out/bin ./\n",
    );
    let Op::File(f) = &root(&l).op else { panic!() };
    let FileAction::Copy(c) = &f.actions[0] else {
        panic!()
    };
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/out/bin", "/app/"));
    assert_eq!(c.chown.as_ref().unwrap().group.as_deref(), Some("app"));
    assert_eq!(c.chmod.as_deref(), Some("0644"));
    assert!(c.follow_symlinks && c.allow_wildcard && c.create_dest_path && !c.unpack_archives);

    // Numeric --from, --link (a merge), heredoc sources, --parents and --exclude.
    let l = lower_src(
        "FROM busybox\nRUN a\nFROM busybox\nCOPY --from=0 --link /x /x\nCOPY --parents --exclude=*.md src/./pkg/** <<EOF /dst/\nhi $HOME\nEOF\n",
    );
    let order = l.definition.topological_order();
    let merge = order
        .iter()
        .map(|d| l.definition.vertex(d).unwrap())
        .find(|v| matches!(v.op, Op::Merge(_)))
        .expect("COPY --link merges a layer");
    assert_eq!(merge.inputs.len(), 2);
    let Op::File(f) = &root(&l).op else { panic!() };
    let FileAction::Copy(parents) = &f.actions[0] else {
        panic!()
    };
    assert_eq!(
        (parents.src.as_str(), parents.include_patterns.as_slice()),
        ("/src", &["pkg/**".to_string()][..])
    );
    assert!(parents.parents);
    assert_eq!(parents.exclude_patterns, ["*.md"]);
    let FileAction::Copy(heredoc) = &f.actions[1] else {
        panic!()
    };
    assert_eq!(heredoc.src, "/EOF");

    let l = lower_src("FROM busybox\nADD https://example.com/a/file.tgz /x/\nADD local.tar /y/\n");
    let http = vertices(&l)
        .into_iter()
        .find_map(|v| match &v.op {
            Op::Source(SourceOp::Http { filename, .. }) => Some(filename.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(http, "file.tgz");
    let Op::File(f) = &root(&l).op else { panic!() };
    let FileAction::Copy(c) = &f.actions[0] else {
        panic!()
    };
    assert!(c.unpack_archives, "ADD extracts local archives");
}

#[test]
fn copy_errors() {
    assert!(
        lower_err("FROM busybox AS a\nCOPY --from=a x y\n").contains("cannot copy from itself")
    );
    assert!(
        lower_err("FROM busybox\nCOPY --from=7 x y\n").contains("stage index 7 does not exist")
    );
    assert!(
        lower_err("FROM busybox\nCOPY --from=Not_A_Ref! x y\n")
            .contains("no build stage is named so")
    );
    assert!(
        lower_err("FROM busybox\nCOPY a b /dest\n")
            .contains("must be a directory and end with a /")
    );
    assert!(
        lower_err("FROM busybox\nCOPY https://x/y /z\n").contains("source can't be a URL for COPY")
    );
    assert!(
        lower_err("FROM busybox\nADD --checksum=sha256:00 a /z\n")
            .contains("checksum requires HTTP(S) or Git sources")
    );
    assert!(
        lower_err("FROM busybox\nADD --checksum=md5:00 https://x/y /z\n")
            .contains("invalid checksum")
    );
    assert!(
        lower_err("FROM busybox\nCOPY --chmod=999 a /z\n")
            .contains("invalid chmod parameter: '999'")
    );
    assert!(
        lower_err("FROM busybox AS a\nCOPY --from=b x y\nFROM busybox AS b\nCOPY --from=a x y\n")
            .contains("circular dependency detected on stage: b")
    );
    // --from naming an image is an image source, like Docker.
    let l = lower_src("FROM busybox\nCOPY --from=alpine:3.19 /etc/os-release /\n");
    assert!(vertices(&l).iter().any(|v| matches!(&v.op, Op::Source(SourceOp::Image { reference, .. }) if reference == "alpine:3.19")));
}

#[test]
fn from_errors_and_platforms() {
    assert!(lower_err("FROM $NOPE\n").contains("base name ($NOPE) should not be blank"));
    assert!(lower_err("FROM --platform=linux/??? busybox\n").contains("invalid platform"));
    let l = lower_src("FROM --platform=$BUILDPLATFORM busybox AS b\nRUN true\nFROM b\nRUN x\n");
    assert!(
        execs(&l)
            .iter()
            .all(|e| e.platform == "linux/amd64".parse().unwrap())
    );
    assert_eq!(l.image.architecture, "amd64");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn no_cache_filter_marks_only_that_stage() {
    let mut o = options();
    o.no_cache_stages = vec!["b".into()];
    let l = try_lower_with(
        "FROM busybox AS a\nRUN one\nFROM a AS b\nRUN two\n",
        &o,
        &EmptyConfigs,
    )
    .unwrap();
    let flags: Vec<(String, bool)> = l
        .definition
        .topological_order()
        .iter()
        .map(|d| {
            let m = l.definition.meta(d).unwrap();
            (m.description.clone(), m.ignore_cache)
        })
        .collect();
    assert_eq!(flags.iter().filter(|(_, i)| *i).count(), 1, "{flags:?}");
    assert!(flags.iter().any(|(d, i)| d == "[b 1/1] RUN two" && *i));
}

/// Each expectation is what BuildKit v0.32's dockerfile2llb writes (see `dispatchRun`,
/// `dispatchArg`, `dispatchCopy`, `dispatchWorkdir`, `emptyImage` and `prefixCommand`).
#[test]
fn config_and_history_as_buildkit_writes_them() {
    let l = lower_src(
        "FROM scratch AS base\nARG V=one\nARG EMPTY\nENV E=env\n\
         FROM base\nARG W=two\nENV FROMARG=$V\nLABEL v=$V\nRUN echo $V\n\
         ENTRYPOINT exec app\nCOPY a $W/\nWORKDIR /srv/\nWORKDIR sub\n",
    );
    let c = &l.image.config;
    assert!(c.env.contains(&"FROMARG=one".to_string()), "{:?}", c.env);
    assert_eq!(c.labels["v"], "one");
    assert_eq!(c.working_dir, "/srv/sub");
    assert_eq!(
        c.entrypoint.as_deref(),
        Some(&["/bin/sh".to_string(), "-c".into(), "exec app".into()][..])
    );
    let history = history(&l);
    assert_eq!(
        history[6..],
        [
            "RUN |3 V=one EMPTY= W=two /bin/sh -c echo $V # buildkit",
            "ENTRYPOINT [\"/bin/sh\" \"-c\" \"exec app\"]",
            "COPY a two/ # buildkit",
            "WORKDIR /srv/",
            "WORKDIR /srv/sub",
        ]
    );
    assert_eq!(
        execs(&l)[0].env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "V=one",
            "E=env",
            "W=two",
            "FROMARG=one"
        ]
    );

    let l = lower_src("FROM scratch\nCOPY a /a\n");
    assert_eq!(l.image.config.working_dir, "/", "BuildKit's empty image");

    let l = lower_src("FROM scratch\nWORKDIR /app/\nRUN true\n");
    assert_eq!(l.image.config.working_dir, "/app/");
    assert_eq!(execs(&l)[0].cwd, "/app/");

    // A WORKDIR that expands to nothing keeps the directory as it is, slash and all.
    let l = lower_src("FROM scratch\nWORKDIR /app/\nWORKDIR $UNSET\nRUN true\n");
    assert_eq!(l.image.config.working_dir, "/app/");
    let workdirs = l
        .image
        .history
        .iter()
        .filter(|h| h.created_by == "WORKDIR /app/")
        .count();
    assert_eq!(workdirs, 2);
}

#[test]
fn step_labels_count_as_buildkit_counts() {
    let l = lower_src(
        "FROM busybox AS a\nENV X=1\nRUN one\nFROM a\nLABEL l=1\nRUN two\n\
         RUN 3\nRUN 4\nRUN 5\nRUN 6\nRUN 7\nRUN 8\nRUN 9\nRUN 10\nRUN 11\n",
    );
    assert_steps_named(
        &l,
        &[
            "[a 1/2] FROM busybox",
            "[a 2/2] RUN one",
            "[stage-1  1/10] RUN two",
            "[stage-1 10/10] RUN 11",
        ],
    );
}

#[test]
fn one_stage_steps_are_named_with_the_stage_when_buildkit_tracks_another_state() {
    let plain = lower_src("FROM busybox\nCOPY a /b\nRUN true\n");
    assert_steps_named(&plain, &["[3/3] RUN true"]);
    for line in [
        "RUN --mount=type=cache,target=/c true",
        "RUN --mount=type=bind,FROM=other,target=/c true",
        "COPY --from=alpine /a /b",
    ] {
        let l = lower_src(&format!("FROM busybox\n{line}\nRUN last\n"));
        assert_steps_named(&l, &["[stage-0 3/3] RUN last"]);
    }
}

/// Asserts that every name in `expected` is a step of `l`.
fn assert_steps_named(l: &Lowered, expected: &[&str]) {
    let descriptions: Vec<String> = l
        .definition
        .topological_order()
        .iter()
        .map(|d| l.definition.meta(d).unwrap().description.clone())
        .collect();
    for expected in expected {
        assert!(
            descriptions.iter().any(|d| d == expected),
            "{expected} not in {descriptions:#?}"
        );
    }
}

#[test]
fn multi_platform_step_names_start_with_the_platform_as_buildkits() {
    let mut o = options();
    o.multi_platform = true;
    o.build_platform = "linux/amd64".parse().unwrap();
    o.target_platform = "linux/arm64".parse().unwrap();
    let l = try_lower_with(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\n\
         RUN echo $TARGETARCH > /arch\nFROM busybox\nCOPY --from=build /arch /arch\n",
        &o,
        &EmptyConfigs,
    )
    .unwrap();
    assert_steps_named(
        &l,
        &[
            "[linux/amd64 build 1/2] FROM busybox",
            "[linux/amd64->arm64 build 2/2] RUN echo $TARGETARCH > /arch",
            "[linux/arm64 stage-1 1/2] FROM busybox",
            "[linux/arm64 stage-1 2/2] COPY --from=build /arch /arch",
        ],
    );
}

#[test]
fn named_contexts_stand_in_for_images_and_stages() {
    let mut o = options();
    o.named_contexts.insert(
        "alpine".into(),
        NamedContext::Local {
            source: "alpine".into(),
            excludes: vec!["*.tmp".into()],
        },
    );
    o.named_contexts
        .insert("base".into(), NamedContext::Image("busybox:1".into()));
    o.named_contexts
        .insert("tools".into(), NamedContext::Stage("builder".into()));
    let l = try_lower_with(
        "FROM busybox AS builder\nRUN make\n\
         FROM base AS base\nRUN never\n\
         FROM alpine:latest\nCOPY --from=tools /out /out\nCOPY --from=base /etc/x /x\n",
        &o,
        &EmptyConfigs,
    )
    .unwrap();
    let descriptions: Vec<String> = l
        .definition
        .topological_order()
        .iter()
        .map(|d| l.definition.meta(d).unwrap().description.clone())
        .collect();
    assert!(
        descriptions.contains(&"[context alpine:latest] load from client".to_string()),
        "{descriptions:#?}"
    );
    assert!(
        descriptions.contains(&"[context base] busybox:1".to_string()),
        "{descriptions:#?}"
    );
    assert!(
        descriptions.iter().any(|d| d.ends_with("RUN make")),
        "the stage a context names is built"
    );
    assert!(
        !descriptions.iter().any(|d| d.ends_with("RUN never")),
        "a stage a context replaces is not"
    );
    assert_eq!(l.image.config.working_dir, "/");
    let locals: Vec<&Vertex> = l
        .definition
        .topological_order()
        .iter()
        .map(|d| l.definition.vertex(d).unwrap())
        .filter(|v| matches!(&v.op, Op::Source(SourceOp::Local { .. })))
        .collect();
    let Op::Source(SourceOp::Local {
        name,
        exclude_patterns,
    }) = &locals[0].op
    else {
        unreachable!()
    };
    assert_eq!(
        (name.as_str(), exclude_patterns.as_slice()),
        ("alpine", &["*.tmp".to_string()][..])
    );
}

#[test]
fn an_oci_layout_context_is_its_image_by_digest_and_errors_name_the_layout() {
    let pinned = format!("docker.io/library/base@sha256:{}", "ab".repeat(32));
    let mut o = options();
    o.named_contexts.insert(
        "base".into(),
        NamedContext::OciLayout {
            layout: "/out/layout".into(),
            reference: pinned.clone(),
        },
    );
    let l = try_lower_with(
        "FROM base
RUN env
",
        &o,
        &OnbuildImage,
    )
    .unwrap();
    let sources: Vec<&Vertex> = vertices(&l)
        .into_iter()
        .filter(|v| matches!(&v.op, Op::Source(SourceOp::Image { .. })))
        .collect();
    let Op::Source(SourceOp::Image { reference, .. }) = &sources[0].op else {
        unreachable!()
    };
    assert_eq!(reference, &pinned);
    assert!(l.definition.topological_order().iter().any(|d| {
        l.definition.meta(d).unwrap().description == "[context base] OCI load from client"
    }));
    // The image's config applies as a base image's does.
    assert_eq!(execs(&l)[1].env, ["PATH=/bin", "LANG=C"]);

    o.named_contexts.insert(
        "base".into(),
        NamedContext::OciLayout {
            layout: "/out/layout".into(),
            reference: "missing".into(),
        },
    );
    let error = try_lower_with(
        "FROM base
",
        &o,
        &OnbuildImage,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("oci-layout /out/layout: image \"missing\" is not in the local store"),
        "{error}"
    );
}

#[test]
fn deep_dockerfiles_are_lowered_or_refused_without_overflowing() {
    let mut chain = String::from("FROM scratch AS s0\nCOPY a /a\n");
    for i in 1..3000 {
        chain.push_str(&format!("FROM s{} AS s{i}\n", i - 1));
    }
    let l = lower_src(&chain);
    assert!(l.definition.root().is_some());

    let nested = format!("FROM scratch\n{}RUN x\n", "ONBUILD ".repeat(10_000));
    assert!(
        lower_err(&nested).contains("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        "{}",
        lower_err(&nested)
    );
}

/// Every input of a step's cache key changes it, and what does not reach the step does
/// not: the root vertex's digest (the op and, through inputs, every step below) is what
/// the solver keys the cache on, with the content of files the steps read added there.
#[test]
fn each_cache_key_input_changes_the_key_and_nothing_else_does() {
    let root = |src: &str| lower_src(src).definition.root().unwrap();
    let base = "FROM busybox\nENV A=1\nUSER app\nWORKDIR /w\nCOPY --chmod=644 --chown=1:1 a /a\n\
                RUN --mount=type=cache,target=/c --network=none make\n";
    let key = root(base);
    let changed = [
        ("env", base.replace("A=1", "A=2")),
        ("user", base.replace("USER app", "USER other")),
        ("workdir", base.replace("/w", "/x")),
        ("chmod", base.replace("--chmod=644", "--chmod=600")),
        ("chown", base.replace("--chown=1:1", "--chown=2:2")),
        (
            "copy source",
            base.replace(
                "COPY --chmod=644 --chown=1:1 a",
                "COPY --chmod=644 --chown=1:1 b",
            ),
        ),
        ("mount", base.replace("target=/c", "target=/d")),
        (
            "network",
            base.replace("--network=none", "--network=default"),
        ),
        ("command", base.replace("make", "make all")),
        ("base image", base.replace("FROM busybox", "FROM alpine")),
        (
            "shell",
            base.replace("ENV A=1", "ENV A=1\nSHELL [\"/bin/bash\", \"-c\"]"),
        ),
        ("arg used", base.replace("ENV A=1", "ARG V=1\nENV A=1")),
    ];
    for (what, src) in changed {
        assert_ne!(root(&src), key, "{what} must change the key");
    }
    let unchanged = [
        ("a comment", base.replace("ENV A=1", "# note\nENV A=1")),
        ("a label", format!("{base}LABEL a=b\n")),
        ("CMD", format!("{base}CMD [\"x\"]\n")),
        ("EXPOSE", format!("{base}EXPOSE 80\n")),
        ("blank lines", base.replace('\n', "\n\n")),
        ("keyword case", base.replace("RUN ", "run ")),
    ];
    for (what, src) in unchanged {
        assert_eq!(root(&src), key, "{what} must not change the key");
    }
}

#[test]
fn buildkit_cache_mount_ns_namespaces_cache_mounts() {
    let src =
        "FROM busybox\nRUN --mount=type=cache,target=/c --mount=type=cache,id=go,target=/g true\n";
    let ids = |l: &Lowered| -> Vec<String> {
        execs(l)[0]
            .mounts
            .iter()
            .filter_map(|m| match &m.kind {
                MountKind::Cache { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ids(&lower_src(src)), ["/c", "go"]);
    let mut o = options();
    o.build_args = BTreeMap::from([("BUILDKIT_CACHE_MOUNT_NS".to_string(), "team".to_string())]);
    let l = try_lower_with(src, &o, &EmptyConfigs).unwrap();
    assert_eq!(ids(&l), ["team//c", "team/go"]);
}

#[test]
fn a_stage_on_a_stage_takes_the_config_env_over_carried_args() {
    // As BuildKit, which adds the config's Env again as the stage starts: X is the ENV
    // value, "-2", not the ARG value "argv" the parent stage also carried.
    let l =
        lower_src("FROM busybox AS s0\nENV X=$X-2\nARG X=argv\nFROM s0\nARG X=$X\nRUN echo $X\n");
    let history = history(&l);
    assert!(history.contains(&"ARG X=-2"), "{history:#?}");
    assert!(
        history.contains(&"RUN |1 X=-2 /bin/sh -c echo $X # buildkit"),
        "{history:#?}"
    );
}
