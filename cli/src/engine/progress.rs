//! Printing progress events as BuildKit's `--progress=plain` does: each
//! step numbered `#N` in the order it starts, its output prefixed with the
//! step number and the seconds since it started.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use kiln_cache::Digest;
use kiln_solver::{Definition, ProgressEvent, ProgressKind};

/// How much progress to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Plain, line-oriented output (also used for `auto` and `tty` for now).
    Auto,
    /// Plain, line-oriented output.
    Plain,
    /// Nothing but errors.
    Quiet,
}

/// Remembers step numbers and start times, and the last lines of output of
/// each step (for error reports).
pub struct PlainProgress<W: Write + Send> {
    out: Mutex<W>,
    state: Mutex<State>,
    mode: ProgressMode,
}

#[derive(Default)]
struct State {
    numbers: HashMap<Digest, (usize, Instant)>,
    /// Last output lines, by step description.
    tails: HashMap<String, Vec<String>>,
    partial: HashMap<Digest, Vec<u8>>,
    /// Steps answered from the cache (their completion is not printed).
    cached: std::collections::HashSet<Digest>,
}

/// Lines of output kept per step for error reports.
const TAIL_LINES: usize = 10;

impl<W: Write + Send> PlainProgress<W> {
    /// Prints to `out`.
    pub fn new(out: W, mode: ProgressMode) -> Self {
        Self {
            out: Mutex::new(out),
            state: Mutex::new(State::default()),
            mode,
        }
    }

    /// Handles one event.
    pub fn event(&self, definition: &Definition, event: ProgressEvent) {
        let mut state = self.state.lock().expect("progress lock");
        let next = state.numbers.len() + 1;
        let (number, started) = *state
            .numbers
            .entry(event.vertex)
            .or_insert((next, Instant::now()));
        let name = definition
            .meta(&event.vertex)
            .map(|m| m.description.clone())
            .unwrap_or_default();
        let mut lines = Vec::new();
        match event.kind {
            ProgressKind::Started => lines.push(format!("#{number} {name}")),
            ProgressKind::Cached => {
                state.cached.insert(event.vertex);
                lines.push(format!("#{number} CACHED"));
            }
            ProgressKind::Log(_, data) => {
                let buffer = state.partial.entry(event.vertex).or_default();
                buffer.extend_from_slice(&data);
                let mut complete = Vec::new();
                while let Some(pos) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=pos).collect();
                    complete.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
                }
                let elapsed = started.elapsed().as_secs_f64();
                for line in complete {
                    lines.push(format!("#{number} {elapsed:.3} {line}"));
                    let tail = state.tails.entry(name.clone()).or_default();
                    tail.push(line);
                    if tail.len() > TAIL_LINES {
                        tail.remove(0);
                    }
                }
            }
            ProgressKind::Completed(_) if state.cached.contains(&event.vertex) => {}
            ProgressKind::Completed(took) => {
                lines.push(format!("#{number} DONE {:.1}s", took.as_secs_f64()))
            }
            ProgressKind::Failed(message, took) => {
                lines.push(format!("#{number} ERROR: {message}"));
                lines.push(format!("#{number} FAILED after {:.1}s", took.as_secs_f64()));
            }
            ProgressKind::Cancelled => lines.push(format!("#{number} CANCELED")),
        }
        if self.mode == ProgressMode::Quiet {
            return;
        }
        let mut out = self.out.lock().expect("progress lock");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    /// The last lines the step described as `description` printed.
    pub fn tail(&self, description: &str) -> Vec<String> {
        let state = self.state.lock().expect("progress lock");
        state.tails.get(description).cloned().unwrap_or_default()
    }
}
