use super::*;
use crate::parser::parse;

fn dockerfile(src: &str) -> Result<Dockerfile> {
    Dockerfile::from_document(&parse(src.as_bytes())?)
}

fn error(src: &str) -> String {
    dockerfile(src).unwrap_err().to_string()
}

fn only(src: &str) -> InstructionKind {
    let df = dockerfile(src).unwrap();
    df.stages[0].instructions[0].kind.clone()
}

#[test]
fn stages_and_meta_args() {
    let df =
        dockerfile("ARG V=1\nFROM --platform=$BUILDPLATFORM img:$V AS Build\nRUN x\nFROM build\n")
            .unwrap();
    assert_eq!(df.meta_args.len(), 1);
    assert_eq!(df.stages.len(), 2);
    assert_eq!(df.stages[0].name.as_deref(), Some("build"));
    assert_eq!(df.stages[0].platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(df.stages[0].base, "img:$V");
    assert_eq!(df.stages[0].instructions.len(), 1);
    assert_eq!(df.stages[1].name, None);
}

#[test]
fn structural_errors() {
    assert_eq!(
        error("RUN x\nFROM a\n"),
        "dockerfile parse error on line 1: no build stage in current context"
    );
    assert!(error("ARG x\n").contains("no FROM instruction"));
    assert_eq!(
        error("FROM a AS 1x\n"),
        "dockerfile parse error on line 1: invalid name for build stage: \"1x\", name can't start with a number or contain symbols"
    );
    assert_eq!(
        error("FROM a b\n"),
        "dockerfile parse error on line 1: FROM requires either one or three arguments"
    );
    assert_eq!(
        error("FROM a\nCOPY --form=x a b\n"),
        "dockerfile parse error on line 2: Unknown flag: form (did you mean from?)"
    );
    assert_eq!(
        error("FROM a\nRUNN x\n"),
        "dockerfile parse error on line 2: unknown instruction: RUNN (did you mean RUN?)"
    );
    assert_eq!(
        error("FROM a\nFOOBAR x\n"),
        "dockerfile parse error on line 2: unknown instruction: FOOBAR"
    );
    assert_eq!(
        error("FROM a\nCOPY x\n"),
        "dockerfile parse error on line 2: COPY requires at least two arguments, but only one was provided. Destination could not be determined"
    );
    assert_eq!(
        error("FROM a\nWORKDIR\n"),
        "dockerfile parse error on line 2: WORKDIR requires exactly one argument"
    );
    assert_eq!(
        error("FROM a\nSHELL /bin/sh -c\n"),
        "dockerfile parse error on line 2: SHELL requires the arguments to be in JSON form: SHELL /bin/sh -c"
    );
    assert_eq!(
        error("FROM a\nONBUILD FROM b\n"),
        "dockerfile parse error on line 2: FROM isn't allowed as an ONBUILD trigger"
    );
    assert_eq!(
        error("FROM a\nONBUILD ONBUILD RUN x\n"),
        "dockerfile parse error on line 2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
    );
    assert_eq!(
        error("FROM a\nCOPY a <<EOF\nx\nEOF\n"),
        "dockerfile parse error on lines 2-4: COPY cannot accept a heredoc as a destination"
    );
    assert_eq!(
        error("FROM a\nENV --x=1 A=b\n"),
        "dockerfile parse error on line 2: Unknown flag: x"
    );
}

#[test]
fn copy_and_add_flags() {
    let InstructionKind::Copy(c) = only(
        "FROM a\nCOPY --from=b --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=x src/ <<EOF /dst/\nhi\nEOF\n",
    ) else {
        panic!()
    };
    assert_eq!(c.from.as_deref(), Some("b"));
    assert_eq!(c.chown.as_deref(), Some("1:2"));
    assert_eq!(c.chmod.as_deref(), Some("755"));
    assert!(c.link && c.parents);
    assert_eq!(c.excludes, ["*.md", "x"]);
    assert_eq!(c.files.paths, ["src/"]);
    assert_eq!(c.files.dest, "/dst/");
    assert_eq!(c.files.contents[0].path, "EOF");
    assert_eq!(c.files.contents[0].data, "hi\n");

    let InstructionKind::Add(a) =
        only("FROM a\nADD --checksum=sha256:00 --keep-git-dir --unpack=false http://x/y /z\n")
    else {
        panic!()
    };
    assert_eq!(a.checksum.as_deref(), Some("sha256:00"));
    assert!(a.keep_git_dir);
    assert_eq!(a.unpack, Some(false));
    assert!(error("FROM a\nADD --from=x a b\n").contains("Unknown flag: from"));
}

#[test]
fn run_forms_and_heredocs() {
    let InstructionKind::Run(r) = only(
        "FROM a\nRUN --mount=type=cache,target=/c --network=none --security=insecure <<-EOF cat\n\techo hi\n\tEOF\n",
    ) else {
        panic!()
    };
    assert_eq!(r.mounts, ["type=cache,target=/c"]);
    assert_eq!(r.network.as_deref(), Some("none"));
    assert_eq!(r.security.as_deref(), Some("insecure"));
    assert!(r.command.prepend_shell);
    assert_eq!(r.command.args, ["<<-EOF cat"]);
    assert_eq!(r.command.files[0].name, "EOF");
    assert!(r.command.files[0].chomp);

    let InstructionKind::Cmd(c) = only("FROM a\nCMD [\"a\", \"b c\"]\n") else {
        panic!()
    };
    assert_eq!(
        (c.args, c.prepend_shell),
        (vec!["a".into(), "b c".into()], false)
    );
}

#[test]
fn healthcheck() {
    let InstructionKind::Healthcheck(h) = only(
        "FROM a\nHEALTHCHECK --interval=5m --timeout=3s --start-period=1s --start-interval=2s --retries=3 CMD curl -f http://localhost/\n",
    ) else {
        panic!()
    };
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(h.interval, 300_000_000_000);
    assert_eq!(h.timeout, 3_000_000_000);
    assert_eq!(
        (h.start_period, h.start_interval, h.retries),
        (1_000_000_000, 2_000_000_000, 3)
    );
    let InstructionKind::Healthcheck(h) = only("FROM a\nHEALTHCHECK CMD [\"a\", \"b\"]\n") else {
        panic!()
    };
    assert_eq!(h.test, ["CMD", "a", "b"]);
    let InstructionKind::Healthcheck(h) = only("FROM a\nhealthcheck none\n") else {
        panic!()
    };
    assert_eq!(h.test, ["NONE"]);
    assert!(error("FROM a\nHEALTHCHECK NONE x\n").contains("HEALTHCHECK NONE takes no arguments"));
    assert!(
        error("FROM a\nHEALTHCHECK FOO x\n")
            .contains("Unknown type \"FOO\" in HEALTHCHECK (try CMD)")
    );
    assert!(
        error("FROM a\nHEALTHCHECK --interval=1us CMD x\n")
            .contains("Interval \"interval\" cannot be less than 1ms")
    );
    assert!(error("FROM a\nHEALTHCHECK --interval=1 CMD x\n").contains("missing unit"));
    assert!(
        error("FROM a\nHEALTHCHECK --retries=-1 CMD x\n")
            .contains("--retries cannot be negative (-1)")
    );
    assert!(error("FROM a\nHEALTHCHECK --retry=1 CMD x\n").contains("Unknown flag: retry"));
}

#[test]
fn simple_instructions() {
    let df = dockerfile(
        "FROM a\nENV A=1 B=\"2 3\"\nLABEL x=y\nEXPOSE 8080 80/udp\nVOLUME [\"/a\", \"/b\"]\nUSER u:g\nARG X Y=2\nSTOPSIGNAL SIGKILL\nMAINTAINER me\nONBUILD RUN echo hi\nSHELL [\"/bin/bash\", \"-c\"]\n",
    )
    .unwrap();
    let kinds: Vec<_> = df.stages[0]
        .instructions
        .iter()
        .map(|i| i.kind.clone())
        .collect();
    assert_eq!(
        kinds[0],
        InstructionKind::Env(vec![
            KeyValue {
                key: "A".into(),
                value: "1".into()
            },
            KeyValue {
                key: "B".into(),
                value: "\"2 3\"".into()
            },
        ])
    );
    assert_eq!(
        kinds[2],
        InstructionKind::Expose(vec!["80/udp".into(), "8080".into()])
    );
    assert_eq!(
        kinds[3],
        InstructionKind::Volume(vec!["/a".into(), "/b".into()])
    );
    assert_eq!(kinds[4], InstructionKind::User("u:g".into()));
    assert_eq!(
        kinds[5],
        InstructionKind::Arg(vec![
            ArgDecl {
                name: "X".into(),
                default: None
            },
            ArgDecl {
                name: "Y".into(),
                default: Some("2".into())
            },
        ])
    );
    assert_eq!(kinds[8], InstructionKind::Onbuild("RUN echo hi".into()));
    assert_eq!(
        kinds[9],
        InstructionKind::Shell(vec!["/bin/bash".into(), "-c".into()])
    );
}
