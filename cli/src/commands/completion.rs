//! `kiln completion`: shell completion scripts.

use clap::Args;
use clap_complete::Shell;

use super::Failure;

/// Arguments of `kiln completion`.
#[derive(Args)]
pub struct CompletionArgs {
    /// The shell to complete kiln's commands and flags in.
    shell: Shell,
}

/// `kiln completion SHELL`: prints the completion script for `command` (kiln's own).
pub fn run(mut command: clap::Command, args: CompletionArgs) -> Result<(), Failure> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(())
}
