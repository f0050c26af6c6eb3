//! SSH agents for the `--ssh` tests: keys made with Debian's `ssh-keygen`, an `ssh-agent`
//! holding them, and a build context whose image has Debian's `ssh-add` and `ssh-keygen`
//! (with the libraries `ldd` lists for them) to talk to a forwarded agent from a RUN step.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{run, wait_until};

/// A new passphrase-less ed25519 key `dir/name`; returns its path and its fingerprint
/// line as `ssh-add -l` prints it.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
        true,
    );
    let listed = run(Command::new("ssh-keygen").arg("-lf").arg(&key), true);
    let fingerprint = String::from_utf8(listed.stdout).unwrap();
    (key, fingerprint.trim().to_string())
}

/// An `ssh-agent` on a socket of its own; killed on drop.
pub struct Agent {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent holding `keys`.
    pub fn start(keys: &[&Path]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client, installed by scripts/test)");
        wait_until(
            Duration::from_secs(10),
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            || "no ssh-agent".into(),
        );
        let agent = Agent {
            child,
            socket,
            _dir: dir,
        };
        for key in keys {
            run(agent.ssh_add().arg(key), true);
        }
        agent
    }

    /// `ssh-add` against this agent.
    pub fn ssh_add(&self) -> Command {
        let mut command = Command::new("ssh-add");
        command.env("SSH_AUTH_SOCK", &self.socket);
        command
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A build context with Debian's `ssh-add` and `ssh-keygen`, their libraries and an
/// `/etc/passwd` for root under `rootfs/`, and a Dockerfile of `FROM busybox:1`,
/// `COPY rootfs/ /`, a `PATH` with `/usr/bin` (busybox's has only `/bin`) and then `steps`.
pub fn context_with_ssh_tools(steps: &str) -> tempfile::TempDir {
    let context = tempfile::tempdir().unwrap();
    let rootfs = context.path().join("rootfs");
    for program in ["/usr/bin/ssh-add", "/usr/bin/ssh-keygen"] {
        let ldd = run(Command::new("ldd").arg(program), true);
        let libraries = String::from_utf8(ldd.stdout).unwrap();
        // `name => /path (addr)` or `/path (addr)`; the vDSO has no path.
        let paths = libraries
            .lines()
            .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')))
            .chain([program]);
        for path in paths {
            let dest = rootfs.join(path.trim_start_matches('/'));
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(path, &dest).unwrap();
        }
    }
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM busybox:1\nCOPY rootfs/ /\nENV PATH=/usr/bin:/bin\n{steps}"),
    )
    .unwrap();
    context
}
