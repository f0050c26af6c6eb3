//! `kiln build --ssh` and `RUN --mount=type=ssh`: a step lists and signs with the agent it
//! is lent (Debian's ssh-agent, ssh-add and ssh-keygen on both sides), cannot add or
//! remove its keys, gets the socket owned and moded as asked; keys given as files are
//! served by an agent kiln runs; missing agents fail as BuildKit says.

use std::fs;
use std::process::{Command, Output};

use kiln_tests::ssh::{Agent, context_with_ssh_tools, keygen};
use kiln_tests::{kiln, run, state_with_busybox};

/// `kiln build` of `context` with `args`, `SSH_AUTH_SOCK` set to `socket` (or unset).
fn build(
    root: &std::path::Path,
    context: &std::path::Path,
    socket: Option<&std::path::Path>,
    args: &[&str],
) -> Output {
    let mut command: Command = kiln();
    command
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .args(args)
        .arg(context);
    match socket {
        Some(socket) => command.env("SSH_AUTH_SOCK", socket),
        None => command.env_remove("SSH_AUTH_SOCK"),
    };
    command.output().unwrap()
}

#[test]
fn steps_use_the_agents_they_are_lent_and_nothing_more() {
    let keys = tempfile::tempdir().unwrap();
    let (main_key, main_fingerprint) = keygen(keys.path(), "main");
    let (file_key, file_fingerprint) = keygen(keys.path(), "from-file");
    let agent = Agent::start(&[&main_key]);
    let context = context_with_ssh_tools(
        "COPY main.pub extra /\n\
         RUN --mount=type=ssh mkdir /seen && ssh-add -l > /seen/listed \\\n\
             && echo \"$SSH_AUTH_SOCK\" > /seen/sock && echo signed > /seen/data \\\n\
             && ssh-keygen -Y sign -q -n file -f /main.pub /seen/data\n\
         RUN --mount=type=ssh,id=files,target=/agent,uid=1000,mode=0660 \\\n\
             stat -c '%u %a' /agent > /seen/owner && SSH_AUTH_SOCK=/agent ssh-add -l > /seen/files\n\
         RUN --mount=type=ssh { ssh-add /extra 2>&1 || echo refused; } > /seen/add \\\n\
             && { ssh-add -D 2>&1 || echo refused; } > /seen/remove-all\n\
         RUN --mount=type=ssh,id=absent,required=false \\\n\
             test -z \"$(ls /run/buildkit 2>/dev/null)\" && echo left-out > /seen/optional\n",
    );
    fs::copy(
        keys.path().join("main.pub"),
        context.path().join("main.pub"),
    )
    .unwrap();
    let (extra_key, _) = keygen(keys.path(), "extra");
    fs::copy(&extra_key, context.path().join("extra")).unwrap();

    let root = state_with_busybox();
    let out = tempfile::tempdir().unwrap();
    let built = build(
        root.path(),
        context.path(),
        Some(&agent.socket),
        &[
            "--ssh",
            "default",
            "--ssh",
            &format!("files={}", file_key.display()),
            "-o",
            &format!("type=local,dest={}", out.path().display()),
        ],
    );
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let seen = |name: &str| fs::read_to_string(out.path().join("seen").join(name)).unwrap();
    assert_eq!(seen("listed").trim(), main_fingerprint);
    assert_eq!(seen("sock"), "/run/buildkit/ssh_agent.0\n");
    // The signature the agent made verifies on the host.
    let signers = keys.path().join("allowed");
    let public = fs::read_to_string(keys.path().join("main.pub")).unwrap();
    fs::write(&signers, format!("main {public}")).unwrap();
    run(
        Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "file", "-I", "main", "-f"])
            .arg(&signers)
            .arg("-s")
            .arg(out.path().join("seen/data.sig"))
            .stdin(fs::File::open(out.path().join("seen/data")).unwrap()),
        true,
    );
    assert_eq!(seen("owner"), "1000 660\n");
    assert_eq!(seen("files").trim(), file_fingerprint);
    assert!(seen("add").contains("refused"), "{}", seen("add"));
    assert!(
        seen("remove-all").contains("refused"),
        "{}",
        seen("remove-all")
    );
    assert_eq!(seen("optional"), "left-out\n");
    // The lent agent still holds exactly its one key.
    let listed = run(agent.ssh_add().arg("-l"), true);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        main_fingerprint
    );
    // Nothing of the agents reached the image: no socket, no stub.
    assert!(!out.path().join("run/buildkit").exists());
    assert!(!out.path().join("agent").exists());
}

#[test]
fn missing_agents_fail_as_buildkit_says() {
    let root = state_with_busybox();
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nRUN --mount=type=ssh,required=true true\n",
    )
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = keygen(keys.path(), "k");
    let cases: [(&[&str], Option<&std::path::Path>, &str); 5] = [
        (
            &[],
            None,
            "no SSH key \"default\" forwarded from the client",
        ),
        (
            &["--ssh", "other=KEY"],
            None,
            "unset ssh forward key default",
        ),
        (
            &["--ssh", "default"],
            None,
            "invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set",
        ),
        (
            &["--ssh", "default=/nonexistent/agent"],
            None,
            "/nonexistent/agent",
        ),
        (
            &["--ssh", "default"],
            Some(std::path::Path::new("/nonexistent/sock")),
            "/nonexistent/sock",
        ),
    ];
    for (args, socket, expected) in cases {
        let key = key.display().to_string();
        let args: Vec<String> = args.iter().map(|a| a.replace("KEY", &key)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let failed = build(root.path(), context.path(), socket, &args);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(!failed.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
