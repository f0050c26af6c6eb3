//! Running a bundle with an OCI runtime process: runc and friends, or kiln's embedded
//! runtime, which re-executes the kiln binary with the same command line.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_solver::LogStream;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags};

/// Something that runs an OCI bundle to completion.
pub trait OciRuntime: Send + Sync {
    /// Runs the bundle at `bundle`, streaming its output to `log`, and
    /// returns the process's exit code. When `cancel` becomes true the
    /// process is killed.
    fn run(
        &self,
        bundle: &Path,
        log: &(dyn Fn(LogStream, &[u8]) + Sync),
        cancel: &AtomicBool,
    ) -> Result<i32>;
}

/// The hidden kiln command that serves the embedded runtime (see [`super::embedded`]).
pub const EMBEDDED_RUNTIME_COMMAND: &str = "oci-runtime";

/// A runtime program with runc's `run`, `kill` and `delete` commands, run as a child process.
#[derive(Debug, Clone)]
pub struct ExternalRuntime {
    binary: PathBuf,
    /// Where it keeps container state: one entry per container.
    state: PathBuf,
    /// `binary` is kiln, serving the embedded runtime (`kiln oci-runtime --state`), rather
    /// than a runc-like program (`runc --root`).
    embedded: bool,
}

impl ExternalRuntime {
    /// An external runtime binary (`runc`, `crun`, `youki`) keeping its container state
    /// under `state`.
    pub fn new(binary: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            state: state.into(),
            embedded: false,
        }
    }

    /// kiln's embedded libcontainer runtime, served by `kiln_binary oci-runtime`, keeping
    /// its container state under `state`.
    pub fn embedded(kiln_binary: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        Self {
            binary: kiln_binary.into(),
            state: state.into(),
            embedded: true,
        }
    }

    /// Kills and deletes every container in the state directory. Only for a process that
    /// holds kiln's state directory alone: then each one belongs to a kiln that was killed.
    pub fn remove_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(&self.state) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let deleted = self
                .command()
                .args([
                    "delete".as_ref(),
                    "--force".as_ref(),
                    entry.file_name().as_os_str(),
                ])
                .stderr(Stdio::null())
                .status();
            if !deleted.is_ok_and(|s| s.success()) {
                // A half-created container the runtime cannot load.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        if self.embedded {
            command.args([EMBEDDED_RUNTIME_COMMAND, "--state"]);
        } else {
            command.arg("--root");
        }
        command.arg(&self.state);
        command
    }
}

impl OciRuntime for ExternalRuntime {
    fn run(
        &self,
        bundle: &Path,
        log: &(dyn Fn(LogStream, &[u8]) + Sync),
        cancel: &AtomicBool,
    ) -> Result<i32> {
        let id = format!(
            "kiln-{}",
            bundle
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut command = self.command();
        // A process group of its own: Ctrl-C in a terminal signals kiln's whole group, and
        // a runtime that died of it would leave its container running. kiln stops the
        // container itself when cancelled.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start the OCI runtime {}", self.binary.display()))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let exited = Pid::from_raw(child.id() as i32)
            .and_then(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok());
        let status = std::thread::scope(|scope| {
            if let Some(out) = stdout {
                scope.spawn(move || pump(out, LogStream::Stdout, log));
            }
            if let Some(err) = stderr {
                scope.spawn(move || pump(err, LogStream::Stderr, log));
            }
            let mut killed = false;
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok::<_, std::io::Error>(status);
                }
                if !killed && cancel.load(Ordering::Relaxed) {
                    let _ = self
                        .command()
                        .args(["kill", &id, "KILL"])
                        .stderr(Stdio::null())
                        .status();
                    killed = true;
                }
                wait_for_exit(exited.as_ref(), Duration::from_millis(50));
            }
        });
        // `run` deletes the container once it exits (runc and the embedded runtime alike);
        // only what a kill or a failing runtime left in the state directory needs a delete.
        if self.state.join(&id).exists() {
            let _ = self
                .command()
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
        }
        let status = status.context("lost track of the OCI runtime")?;
        if cancel.load(Ordering::Relaxed) {
            anyhow::bail!("cancelled");
        }
        Ok(status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        }))
    }
}

/// Sleeps until the process behind `pidfd` exits or `timeout` passes. A step's end is
/// noticed at once; a 20 ms polling sleep had cost every RUN step 10 ms on average.
/// Without a pidfd (Linux before 5.3) it just sleeps.
fn wait_for_exit(pidfd: Option<&OwnedFd>, timeout: Duration) {
    match pidfd {
        Some(fd) => {
            let timeout = Timespec {
                tv_sec: 0,
                tv_nsec: i64::from(timeout.subsec_nanos()),
            };
            let _ = poll(&mut [PollFd::new(fd, PollFlags::IN)], Some(&timeout));
        }
        None => std::thread::sleep(timeout),
    }
}

fn pump(mut reader: impl Read, stream: LogStream, log: &(dyn Fn(LogStream, &[u8]) + Sync)) {
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(n) = reader.read(&mut buffer) {
        if n == 0 {
            break;
        }
        log(stream, &buffer[..n]);
    }
}
