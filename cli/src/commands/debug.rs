//! `kiln debug …`: views of the frontend's intermediate results.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use kiln_frontend::instructions::Dockerfile as Stages;
use kiln_frontend::lower::{BuildOptions, EmptyConfigs, lower_platforms};
use kiln_solver::Platform;

use super::{Dockerfile, Failure, default_dockerfile, parse_build_args};

/// The `debug` subcommands.
#[derive(Subcommand)]
pub enum DebugCommand {
    /// Print the Dockerfile's parse tree in BuildKit's AST dump format.
    Parse(ParseArgs),
    /// Print the op DAG a build would run, with vertex digests and the image config.
    ///
    /// Base images are not looked up, so their config (Env, WorkingDir, ONBUILD) is taken as
    /// empty.
    Graph(GraphArgs),
}

/// Output formats of `kiln debug graph`.
#[derive(Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// `{"root", "vertices": [...], "image", "warnings"}`.
    Json,
    /// Graphviz.
    Dot,
}

/// Arguments of `kiln debug graph`.
#[derive(Args)]
pub struct GraphArgs {
    /// Path to the Dockerfile (`-` for standard input).
    #[arg(short = 'f', long = "file", default_value_os_t = default_dockerfile())]
    file: PathBuf,
    /// The stage to build (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// A build argument, `KEY=VALUE` (or `KEY` to take the value from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// The target platforms (default: this machine's); several (`a,b`, repeatable) show
    /// one graph whose shared steps are one vertex.
    #[arg(long)]
    platform: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: GraphFormat,
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
        DebugCommand::Graph(args) => graph(args),
    }
}

fn graph(args: GraphArgs) -> Result<(), Failure> {
    let dockerfile = Dockerfile::read(&args.file)?;
    let options = BuildOptions {
        target: args.target,
        build_args: parse_build_args(&args.build_args)?,
        ..BuildOptions::default()
    };
    let platforms = Platform::parse_list(&args.platform.join(",")).map_err(Failure::msg)?;
    let lowered = kiln_frontend::parser::parse(&dockerfile.bytes)
        .and_then(|doc| Stages::from_document(&doc))
        .and_then(|stages| lower_platforms(&stages, &options, &platforms, &EmptyConfigs))
        .map_err(|e| Failure::frontend(&e, &dockerfile))?;
    for warning in &lowered.warnings {
        eprintln!("warning: {warning}");
    }
    match args.format {
        GraphFormat::Dot => print!("{}", lowered.definition.to_dot()),
        GraphFormat::Json => {
            let mut json = lowered.definition.to_json();
            // The image config, or with several platforms each platform's.
            json["image"] = match lowered.images.as_slice() {
                [(_, image)] => serde_json::to_value(image).map_err(Failure::msg)?,
                several => serde_json::Value::Array(
                    several
                        .iter()
                        .map(|(platform, image)| {
                            serde_json::json!({"platform": platform.to_string(), "config": image})
                        })
                        .collect(),
                ),
            };
            json["warnings"] = serde_json::json!(lowered.warnings);
            let text = serde_json::to_string_pretty(&json).map_err(Failure::msg)?;
            println!("{text}");
        }
    }
    Ok(())
}
