//! Command lines of the kind CI pipelines run, taken as they are with only the program
//! name changed from `docker buildx build`: the ones kiln supports work, and every flag
//! it does not support yet fails with an error naming the flag (never silently accepted).

use std::fs;
use std::process::Output;

use kiln_tests::ssh::Agent;
use kiln_tests::{kiln, output_with_stdin, state_with_busybox};

const DOCKERFILE: &str = "\
FROM busybox:1 AS base
ARG VERSION=dev
RUN --mount=type=secret,id=token test \"$(cat /run/secrets/token)\" = s3cret
COPY --from=extra note.txt /note.txt
RUN echo $VERSION > /version
";

/// `kiln --root ROOT` + `line` (split on spaces) run in `dir`, with `stdin` and an SSH
/// agent's socket in `SSH_AUTH_SOCK`.
fn run_line(
    root: &std::path::Path,
    dir: &std::path::Path,
    agent: &Agent,
    line: &str,
    stdin: &[u8],
) -> Output {
    output_with_stdin(
        kiln()
            .arg("--root")
            .arg(root)
            .args(line.split(' '))
            .current_dir(dir)
            .env("TOKEN", "s3cret")
            .env("SSH_AUTH_SOCK", &agent.socket),
        stdin,
    )
}

#[test]
fn ci_command_lines_work_or_name_what_is_missing() {
    let root = state_with_busybox();
    let agent = Agent::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::create_dir(dir.join("extra")).unwrap();
    fs::write(dir.join("extra/note.txt"), "note\n").unwrap();

    let supported = [
        "build --secret id=token,env=TOKEN --ssh default --build-context extra=extra \
         --cache-to type=local,dest=cache,mode=max -q -f - .",
        "build --secret id=token,env=TOKEN --build-context extra=./extra \
         --cache-from type=local,src=cache --build-arg VERSION=1.2.3 \
         --label org.opencontainers.image.source=https://example.com/app \
         --provenance=false --sbom=false -t app:ci --progress plain .",
        "build --secret id=token,env=TOKEN --build-context extra=extra \
         --platform linux/amd64,linux/arm64 -o type=oci,dest=multi.tar --progress=plain .",
        "build --secret id=token,env=TOKEN --build-context extra=extra --target base \
         --iidfile iid --metadata-file meta.json --no-cache-filter base -o type=local,dest=out .",
    ];
    for line in supported {
        let out = run_line(root.path(), dir, &agent, line, DOCKERFILE.as_bytes());
        assert!(
            out.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if line.contains(" -q ") {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.starts_with("sha256:") && stdout.lines().count() == 1,
                "{stdout}"
            );
        }
    }
    // The cache and outputs are where the lines said.
    assert!(dir.join("cache/index.json").is_file());
    assert!(dir.join("multi.tar").is_file());
    assert_eq!(
        fs::read_to_string(dir.join("out/version")).unwrap(),
        "dev\n"
    );
    assert!(
        fs::read_to_string(dir.join("iid"))
            .unwrap()
            .starts_with("sha256:")
    );

    // Not supported yet (or not allowed): each fails, naming its flag (or entitlement).
    let missing = [
        ("build --network=host .", "network.host"),
        (
            "build --annotation index:org.opencontainers.image.title=x .",
            "--annotation",
        ),
        ("build --attest type=provenance,mode=max .", "--attest"),
        ("build --cgroup-parent kiln .", "--cgroup-parent"),
        ("build --check .", "--check"),
        ("build --cache-to type=gha .", "type=gha"),
    ];
    for (line, flag) in missing {
        let out = run_line(root.path(), dir, &agent, line, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line} was accepted");
        assert!(stderr.contains(flag), "{line}: {stderr}");
    }
}
