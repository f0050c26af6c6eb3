//! `kiln debug …`: views of the frontend's intermediate results.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Dockerfile, Failure, default_dockerfile};

/// The `debug` subcommands.
#[derive(Subcommand)]
pub enum DebugCommand {
    /// Print the Dockerfile's parse tree in BuildKit's AST dump format.
    Parse(ParseArgs),
}

/// Arguments of `kiln debug parse`.
#[derive(Args)]
pub struct ParseArgs {
    /// Path to the Dockerfile (`-` for standard input).
    #[arg(short = 'f', long = "file", default_value_os_t = default_dockerfile())]
    file: PathBuf,
}

/// Runs a `debug` subcommand.
pub fn run(cmd: DebugCommand) -> Result<(), Failure> {
    match cmd {
        DebugCommand::Parse(args) => {
            let dockerfile = Dockerfile::read(&args.file)?;
            let doc = kiln_frontend::parser::parse(&dockerfile.bytes)
                .map_err(|e| Failure::frontend(&e, &dockerfile))?;
            print!("{}", doc.dump());
            Ok(())
        }
    }
}
