//! The `kiln` command: a BuildKit-class container image builder.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kiln builds container images from Dockerfiles.
#[derive(Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect how kiln reads a Dockerfile.
    #[command(subcommand)]
    Debug(commands::debug::DebugCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Debug(cmd) => commands::debug::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprint!("{err}");
            ExitCode::FAILURE
        }
    }
}
