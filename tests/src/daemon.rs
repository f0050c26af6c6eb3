//! `kiln serve` for the tests of remote builds: a daemon on a unix socket of its own.

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use crate::{BusyboxArchives, kiln, load_into, wait_until};

/// A running `kiln serve` with busybox loaded; stopped with SIGTERM on drop.
pub struct Daemon {
    /// The `kiln serve` process.
    pub child: Child,
    /// Its state directory.
    pub root: tempfile::TempDir,
    /// Its address, for `--builder`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon on a unix socket, with the image of `archives` loaded and `extra`
    /// arguments to `kiln serve` (more addresses, TLS).
    pub fn start(archives: &BusyboxArchives, extra: &[&str]) -> Daemon {
        let root = tempfile::tempdir().unwrap();
        load_into(root.path(), &archives.oci);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kiln.sock");
        let address = format!("unix://{}", socket.display());
        let mut command = kiln();
        command
            .arg("--root")
            .arg(root.path())
            .args(["serve", "--addr", &address])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.args(extra);
        let child = command.spawn().unwrap();
        wait_until(
            Duration::from_secs(20),
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            || "kiln serve did not start".into(),
        );
        Daemon {
            child,
            root,
            address,
            _dir: dir,
        }
    }

    /// `kiln build --builder` against this daemon.
    pub fn build(&self, context: &Path, extra: &[&str]) -> Output {
        kiln()
            .args(["build", "--progress", "plain", "--builder", &self.address])
            .args(extra)
            .arg(context)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}
