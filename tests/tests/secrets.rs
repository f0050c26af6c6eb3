//! `--secret` and `RUN --mount=type=secret`: the step sees the secret, and its bytes are
//! nowhere after the build (state directory, outputs, log), as with BuildKit.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_tests::{kiln, run, state_with_busybox, walk};

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Files under `dir` whose content holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|path| {
            fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
                && fs::read(path)
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .map(|path| path.display().to_string())
        .collect()
}

#[test]
fn secrets_reach_the_step_and_nothing_else() {
    let root = state_with_busybox();
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\n\
         RUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -d' ' -f1 > /token.sha\n\
         RUN --mount=type=secret,id=token,target=/etc/tok,mode=0440,uid=1000 stat -c '%a %u' /etc/tok > /tok.stat\n\
         RUN --mount=type=secret,id=api,env=API_KEY printf %s \"$API_KEY\" | sha256sum | cut -d' ' -f1 > /api.sha && test ! -e /run/secrets/api\n\
         RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && touch /absent-ok\n",
    )
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let nonce = sha256_hex(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    let token = format!("token-{}", &nonce[..24]);
    let api = format!("api-{}", &nonce[24..48]);
    fs::write(secrets.path().join("token"), &token).unwrap();
    let out = tempfile::tempdir().unwrap();
    let build = |token_file: &Path| {
        run(
            kiln()
                .arg("--root")
                .arg(root.path())
                .args(["build", "--progress", "plain", "-t", "app:1"])
                .arg("--secret")
                .arg(format!("id=token,src={}", token_file.display()))
                .args(["--secret", "id=api,env=KILN_TEST_API"])
                .env("KILN_TEST_API", &api)
                .arg("-o")
                .arg(format!(
                    "type=local,dest={}",
                    out.path().join("rootfs").display()
                ))
                .arg("-o")
                .arg(format!(
                    "type=oci,dest={}",
                    out.path().join("image.tar").display()
                ))
                .arg(context.path()),
            true,
        )
    };
    let first = build(&secrets.path().join("token"));
    let rootfs = out.path().join("rootfs");
    let read = |name: &str| fs::read_to_string(rootfs.join(name)).unwrap();
    assert_eq!(read("token.sha").trim(), sha256_hex(token.as_bytes()));
    assert_eq!(read("api.sha").trim(), sha256_hex(api.as_bytes()));
    assert_eq!(read("tok.stat").trim(), "440 1000");
    assert!(
        rootfs.join("absent-ok").exists(),
        "an absent optional secret is no file"
    );
    assert!(
        !rootfs.join("run/secrets").exists(),
        "no mount point is left"
    );

    // Nowhere: not in the state directory, the outputs or the log.
    let log = [first.stdout.as_slice(), first.stderr.as_slice()].concat();
    for secret in [&token, &api] {
        let bytes = secret.as_bytes();
        assert!(files_holding(root.path(), bytes).is_empty());
        assert!(files_holding(out.path(), bytes).is_empty());
        assert!(!log.windows(bytes.len()).any(|w| w == bytes));
    }

    // Another value of a secret keeps the cache, as in BuildKit.
    fs::write(secrets.path().join("other"), "another value").unwrap();
    let second = build(&secrets.path().join("other"));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.ends_with(" CACHED")).count(),
        5,
        "{stderr}"
    );

    // A required secret that was not given fails the step, naming it.
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN --mount=type=secret,id=missing,required=true true\n",
    )
    .unwrap();
    let failed = run(
        kiln()
            .arg("--root")
            .arg(root.path())
            .arg("build")
            .arg(context.path()),
        false,
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("secret missing: not found"), "{stderr}");

    // A malformed --secret is refused before anything runs.
    let refused = run(
        Command::new(kiln_tests::kiln_bin())
            .arg("--root")
            .arg(root.path())
            .args(["build", "--secret", "src=/x"])
            .arg(context.path()),
        false,
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("secret missing ID"));
}
