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
use rustix::process::{WaitOptions, wait};

/// Creates container `id` from `bundle`, runs it in the foreground with this process's
/// stdio, deletes it, and returns its exit code (128 + signal when killed), as `runc run`.
pub fn run(state: &Path, bundle: &Path, id: &str) -> Result<i32> {
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state)?
        .validate_id()?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(false)
        .build()
        .with_context(|| format!("cannot create container {id}"))?;
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
