//! The `kiln` command: a BuildKit-class container image builder.

mod commands;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use kiln_cache::StateDir;

/// kiln builds container images from Dockerfiles.
#[derive(Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    /// State directory: content store, snapshots, cache and image metadata
    /// [default: $KILN_ROOT, /var/lib/kiln for root, else $XDG_DATA_HOME/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Speak plain HTTP to this registry (`host:port`; loopback hosts always are); repeatable.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    insecure_registries: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<commands::build::BuildArgs>),
    /// Inspect how kiln reads a Dockerfile.
    #[command(subcommand)]
    Debug(commands::debug::DebugCommand),
    /// Pull an image from a registry into the local store.
    Pull(commands::registry::PullArgs),
    /// Push an image from the local store to its registry.
    Push(commands::registry::PushArgs),
    /// Log in to a registry (stored in docker's config.json).
    Login(commands::registry::LoginArgs),
    /// Forget a registry's credentials.
    Logout(commands::registry::LogoutArgs),
    /// Import an image archive (`docker save` or OCI) into the local store.
    Load(commands::images::LoadArgs),
    /// List the images in the local store.
    Images(commands::images::ImagesArgs),
    /// Remove image names from the local store.
    Rmi(commands::images::RmiArgs),
    /// Give an image of the local store another name.
    Tag(commands::tag::TagArgs),
    /// Write images of the local store to a `docker save` archive (standard output by default).
    Save(commands::save::SaveArgs),
    /// Show images of the local store in detail, as JSON.
    Inspect(commands::inspect::InspectArgs),
    /// Show the disk space the state directory uses.
    Du(commands::store::DuArgs),
    /// Remove build cache (what no named image uses; everything with --all).
    Prune(commands::store::PruneArgs),
    /// Re-read every stored blob against its digest (and repair the store).
    Check(commands::store::CheckArgs),
    /// Run kiln as a remote builder that BuildKit's clients and `kiln build --builder` use.
    Serve(Box<commands::serve::ServeArgs>),
    /// Print a shell completion script for kiln.
    Completion(commands::completion::CompletionArgs),
    /// The embedded OCI runtime, which kiln runs in a child process for each RUN step.
    #[command(name = "oci-runtime", hide = true)]
    OciRuntime(commands::oci_runtime::OciRuntimeArgs),
}

impl Command {
    /// Whether the command works on this machine's state directory (and so needs root).
    fn uses_local_state(&self) -> bool {
        match self {
            Command::Build(args) => !args.is_remote(),
            Command::Du(args) => !args.is_remote(),
            Command::Prune(args) => !args.is_remote(),
            Command::Serve(_) => true,
            other => other.reaps_first(),
        }
    }

    /// Whether the command first clears what a killed kiln left in the state directory
    /// (builds, `du`, `prune` and `serve` do it as they open it).
    fn reaps_first(&self) -> bool {
        matches!(
            self,
            Command::Pull(_)
                | Command::Push(_)
                | Command::Load(_)
                | Command::Images(_)
                | Command::Rmi(_)
                | Command::Tag(_)
                | Command::Save(_)
                | Command::Inspect(_)
                | Command::Check(_)
        )
    }
}

/// Raises the soft limit on open files to the hard one, as Go does for buildkitd: kiln
/// copies many files at once, and RUN steps inherit the limit.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        // Best effort: the old limit still works.
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

fn main() -> ExitCode {
    raise_open_file_limit();
    let cli = Cli::parse();
    let state = StateDir::new(cli.root.unwrap_or_else(StateDir::default_root));
    let registry = kiln_registry::RegistryOptions {
        insecure_registries: cli.insecure_registries,
        credentials: None,
    };
    if cli.command.uses_local_state()
        && let Err(err) = commands::require_root(&state)
    {
        eprint!("{err}");
        return ExitCode::FAILURE;
    }
    if cli.command.reaps_first() {
        commands::reap(&state);
    }
    let result = match cli.command {
        Command::Build(args) => commands::build::run(&state, &registry, *args),
        Command::Pull(args) => commands::registry::pull(&state, &registry, args),
        Command::Push(args) => commands::registry::push(&state, &registry, args),
        Command::Login(args) => commands::registry::login(&registry, args),
        Command::Logout(args) => commands::registry::logout(args),
        Command::Debug(cmd) => commands::debug::run(cmd),
        Command::Load(args) => commands::images::load(&state, args),
        Command::Images(args) => commands::images::list(&state, args),
        Command::Rmi(args) => commands::images::remove(&state, args),
        Command::Tag(args) => commands::tag::run(&state, args),
        Command::Save(args) => commands::save::run(&state, args),
        Command::Inspect(args) => commands::inspect::run(&state, args),
        Command::Completion(args) => commands::completion::run(Cli::command(), args),
        Command::Du(args) => commands::store::du(&state, args),
        Command::Prune(args) => commands::store::prune(&state, args),
        Command::Check(args) => commands::store::check(&state, args),
        Command::Serve(args) => commands::serve::run(&state, &registry, *args),
        Command::OciRuntime(args) => return commands::oci_runtime::run(args),
    };
    kiln_cache::close_databases();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprint!("{err}");
            ExitCode::FAILURE
        }
    }
}
