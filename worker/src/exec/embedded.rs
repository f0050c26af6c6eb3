//! The embedded OCI runtime: youki's `libcontainer`, driven through runc's command line.
//!
//! libcontainer forks and clones, which is only safe from a single-threaded process, so
//! these functions run in a child process that re-executes the kiln binary (its hidden
//! `oci-runtime` command); the build process talks to that child exactly as it talks to runc.

use std::path::Path;

use anyhow::{Context, Result, bail};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use rustix::process::{Pid, WaitOptions, kill_process, wait};

/// How often creating a container is tried. libcontainer 0.5 has a race: the container's
/// init process can report ready before the intermediate process has reported init's pid
/// (both write to one channel), and creation then fails with "received unexpected
/// message: InitReady, expected: IntermediateReady". It struck about one container in 500
/// when 8 stages ran RUN steps at once on 2 cores. Nothing of the step has run by then.
const CREATE_ATTEMPTS: usize = 3;

/// Creates container `id` from `bundle`, runs it in the foreground with this process's
/// stdio, deletes it, and returns its exit code (128 + signal when killed), as `runc run`.
pub fn run(state: &Path, bundle: &Path, id: &str) -> Result<i32> {
    super::cgroup::nest_under_own(bundle, id)?;
    let mut container = create(state, bundle, id)?;
    let outcome = container
        .start()
        .with_context(|| format!("cannot start container {id}"))
        .and_then(|()| {
            let init = container
                .pid()
                .context("the container has no init process")?;
            wait_for(init.as_raw())
        });
    let deleted = container.delete(true);
    let code = outcome?;
    deleted.with_context(|| format!("cannot delete container {id}"))?;
    Ok(code)
}

/// Creates container `id`, trying again after libcontainer's ready-message race (see
/// [`CREATE_ATTEMPTS`]).
fn create(state: &Path, bundle: &Path, id: &str) -> Result<Container> {
    let mut attempt = 1;
    loop {
        let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(state)?
            .validate_id()?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(false)
            .build();
        let err = match built {
            Ok(container) => return Ok(container),
            Err(err) => anyhow::Error::from(err),
        };
        let raced = format!("{err:#}").contains("expected: IntermediateReady");
        if !raced || attempt == CREATE_ATTEMPTS {
            return Err(err.context(format!("cannot create container {id}")));
        }
        // The init process may be up, waiting to be started: kill it, and what
        // libcontainer's clean-up left of the container.
        kill_children();
        let _ = std::fs::remove_dir_all(state.join(id));
        attempt += 1;
    }
}

/// Kills and reaps every child of this process (this process runs one container, so its
/// children are that container's processes).
fn kill_children() {
    let me = std::process::id();
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the command name (in parentheses, maybe with spaces): state, ppid.
            let (_, rest) = stat.rsplit_once(')')?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == me).then_some(pid)
        });
    for pid in children {
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    // Until none is left (ECHILD).
    while let Ok(Some(_)) | Err(rustix::io::Errno::INTR) = wait(WaitOptions::empty()) {}
}

/// Reaps children until `init` exits; returns its exit code.
fn wait_for(init: i32) -> Result<i32> {
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == init => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(signal) = status.terminating_signal() {
                    return Ok(128 + signal);
                }
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => bail!("lost track of the container process: {err}"),
        }
    }
}

/// Sends `signal` (a name such as `KILL` or `SIGTERM`, or a number) to container `id`'s
/// init process.
pub fn kill(state: &Path, id: &str, signal: &str) -> Result<()> {
    let signal = Signal::try_from(signal).with_context(|| format!("unknown signal {signal}"))?;
    load(state, id)?
        .kill(signal, false)
        .with_context(|| format!("cannot signal container {id}"))
}

/// Deletes container `id`; with `force`, kills it first if it still runs.
pub fn delete(state: &Path, id: &str, force: bool) -> Result<()> {
    load(state, id)?
        .delete(force)
        .with_context(|| format!("cannot delete container {id}"))
}

fn load(state: &Path, id: &str) -> Result<Container> {
    Container::load(state.join(id)).with_context(|| format!("container {id} does not exist"))
}
