//! `kiln oci-runtime`: the embedded runtime behind runc's `run`, `kill` and `delete`.
//!
//! kiln re-executes itself with this command for every RUN step, so that libcontainer runs
//! in a fresh single-threaded process; people never need to call it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kiln_worker::exec::embedded;

/// Arguments of `kiln oci-runtime`.
#[derive(Args)]
pub struct OciRuntimeArgs {
    /// Where container state lives.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create and run a container in the foreground; exits with its exit code.
    Run {
        /// The bundle directory (config.json and the root filesystem).
        #[arg(long)]
        bundle: PathBuf,
        /// The container ID.
        id: String,
    },
    /// Signal a container's init process.
    Kill {
        /// The container ID.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        /// Kill it first if it still runs.
        #[arg(long)]
        force: bool,
        /// The container ID.
        id: String,
    },
}

/// Runs one runtime command; errors go to stderr, which the build shows as step output.
pub fn run(args: OciRuntimeArgs) -> ExitCode {
    let result = match &args.action {
        Action::Run { bundle, id } => embedded::run(&args.state, bundle, id),
        Action::Kill { id, signal } => embedded::kill(&args.state, id, signal).map(|()| 0),
        Action::Delete { force, id } => embedded::delete(&args.state, id, *force).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(err) => {
            eprintln!("kiln oci-runtime: {err:#}");
            ExitCode::FAILURE
        }
    }
}
