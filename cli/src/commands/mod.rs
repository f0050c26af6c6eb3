//! One module per `kiln` subcommand, plus what they share.

pub mod build;
pub mod completion;
pub mod context;
pub mod debug;
pub mod docker_load;
pub mod images;
pub mod inspect;
pub mod lookup;
pub mod oci_runtime;
pub mod registry;
pub mod remote;
pub mod save;
pub mod serve;
pub mod store;
pub mod tag;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A failure to report to the user: already formatted, ending in a newline.
pub struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Failure {
    /// A one-line error message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Failure(format!("error: {message}\n"))
    }

    /// A message already formatted for the terminal.
    pub fn raw(message: String) -> Self {
        Failure(message)
    }

    /// A frontend error, rendered with a snippet of the Dockerfile.
    pub fn frontend(err: &kiln_frontend::Error, dockerfile: &Dockerfile) -> Self {
        Failure(err.render(&dockerfile.display_name, &dockerfile.bytes))
    }
}

/// A Dockerfile read from disk (or stdin for `-`), with the name to show in errors.
pub struct Dockerfile {
    /// What to call the file in messages.
    pub display_name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Dockerfile {
    /// Reads `path`, or standard input when `path` is `-`.
    pub fn read(path: &Path) -> Result<Self, Failure> {
        if path == Path::new("-") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .map_err(|e| Failure::msg(format!("cannot read the Dockerfile from stdin: {e}")))?;
            return Ok(Dockerfile {
                display_name: "Dockerfile".into(),
                bytes,
            });
        }
        let bytes = std::fs::read(path)
            .map_err(|e| Failure::msg(format!("cannot read Dockerfile {}: {e}", path.display())))?;
        let display_name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Dockerfile {
            display_name,
            bytes,
        })
    }
}

/// The `-f` default: `Dockerfile` in the current directory.
pub fn default_dockerfile() -> PathBuf {
    PathBuf::from("Dockerfile")
}

/// `--build-arg` values: `KEY=VALUE`, or `KEY` alone to take the value from the environment
/// (skipped when unset, as docker does).
pub fn parse_build_args(raw: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut args = BTreeMap::new();
    for arg in raw {
        match arg.split_once('=') {
            Some(("", _)) => {
                return Err(Failure::msg(format!(
                    "invalid --build-arg {arg:?}: the name is empty"
                )));
            }
            Some((k, v)) => {
                args.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(arg) {
                    args.insert(arg.clone(), v);
                }
            }
        }
    }
    Ok(args)
}

/// Docker's human sizes: `1.09MB`, `723kB`.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", three_significant_digits(value), units[unit])
}

/// Go's `%.3g`: three significant digits, trailing zeros dropped, an exponent when the
/// number has more integer digits than that (`1e+03`).
fn three_significant_digits(value: f64) -> String {
    let scientific = format!("{value:.2e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |s: &str| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..3).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    } else {
        trim(&format!("{value:.*}", (2 - exponent).max(0) as usize))
    }
}

/// Prints rows as left-aligned columns three spaces apart, as docker's tables.
pub fn print_table<R: AsRef<[String]>>(rows: &[R]) {
    let columns = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref()[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// Runs `future` to its end on a fresh multi-threaded runtime (for the commands that talk
/// to a remote builder or serve one).
pub fn block_on<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, Failure> {
    runtime()
        .map_err(Failure::msg)?
        .block_on(future)
        .map_err(|e| Failure::msg(format!("{e:#}")))
}

/// A multi-threaded runtime for talking to or serving a remote builder.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Fails in one line unless kiln runs as root: the state directory and RUN's sandboxes
/// need it.
pub fn require_root(state: &kiln_cache::StateDir) -> Result<(), Failure> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    Err(Failure::msg(format!(
        "kiln needs root: it keeps images and build cache in {} and runs RUN steps in sandboxes (run it with sudo, or build on a remote builder with --builder)",
        state.root().display()
    )))
}

/// Stops and clears what a killed kiln left in the state directory (its containers run on
/// otherwise) when no other kiln holds it: every command that uses the state directory
/// does this first. A missing state directory is left alone.
pub fn reap(state: &kiln_cache::StateDir) {
    if !state.root().is_dir() {
        return;
    }
    if let Err(err) = kiln_engine::recover(state, None) {
        eprintln!("warning: cannot clear what an interrupted kiln left: {err:#}");
    }
}
