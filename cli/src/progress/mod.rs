//! Showing a build's progress events: BuildKit's live terminal display (`tty`), its
//! line-oriented `plain` output, one JSON object per event (`json`), BuildKit's own JSON
//! (`rawjson`), or nothing (`quiet`, `none`).
//!
//! Every mode keeps the same record of steps: numbers in the order they start, states,
//! and the last lines of output, which error reports quote.

mod json;
mod plain;
mod rawjson;
mod tty;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_cache::Digest;
use kiln_engine::BuildEvent;
use kiln_solver::ProgressKind;

/// How to show progress (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// `tty` in a terminal, else `plain`.
    Auto,
    /// A live display that redraws itself.
    Tty,
    /// Line-oriented output, for CI logs.
    Plain,
    /// One JSON object per event, for tools.
    Json,
    /// BuildKit's `SolveStatus` objects as JSON, one per line (buildx's `rawjson`).
    Rawjson,
    /// Nothing but errors; the image ID on standard output at the end.
    Quiet,
    /// Nothing but errors.
    None,
}

/// Lines of output kept per step for error reports and the live display.
const TAIL_LINES: usize = 10;

/// Terminal rows assumed when a terminal does not tell its height.
const DEFAULT_ROWS: usize = 24;

/// What a step is doing.
#[derive(Debug, Clone, PartialEq)]
enum StepState {
    Running,
    Cached,
    Done(Duration),
    Failed(Duration),
    Cancelled,
}

/// One step as the display knows it.
#[derive(Debug, Clone)]
struct Step {
    number: usize,
    name: String,
    started: Instant,
    state: StepState,
    /// The last complete lines of output.
    tail: Vec<String>,
    /// Output after the last newline.
    partial: Vec<u8>,
}

/// The steps seen so far, in start order.
#[derive(Debug, Default)]
struct Steps {
    order: Vec<Digest>,
    by_vertex: HashMap<Digest, Step>,
    /// How many vertices the build has.
    total: usize,
    /// Messages that belong to no step (pulls, pushes), for the live display.
    notices: Vec<String>,
}

/// Receives progress events and shows them in one mode.
pub struct Progress {
    mode: ProgressMode,
    /// Terminal width for `tty` frames.
    width: usize,
    /// Terminal height, which live `tty` frames stay within.
    height: usize,
    out: Mutex<Box<dyn Write + Send>>,
    steps: Mutex<Steps>,
    started: Instant,
}

impl Progress {
    /// Shows progress on `out` (standard error) in `mode`; `auto` picks `tty` when
    /// `out` is a terminal, whose `(columns, rows)` are `terminal_size`.
    pub fn new(
        mode: ProgressMode,
        out: Box<dyn Write + Send>,
        terminal_size: Option<(usize, usize)>,
    ) -> Self {
        let is_terminal = terminal_size.is_some();
        let mode = match mode {
            ProgressMode::Auto if is_terminal => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        Self {
            mode,
            width: terminal_size.map_or(80, |(width, _)| width),
            height: terminal_size.map_or(DEFAULT_ROWS, |(_, height)| height),
            out: Mutex::new(out),
            steps: Mutex::default(),
            started: Instant::now(),
        }
    }

    /// Progress on standard error.
    pub fn stderr(mode: ProgressMode) -> Self {
        let stderr = std::io::stderr();
        let size = stderr.is_terminal().then(|| {
            rustix::termios::tcgetwinsize(&stderr).map_or((80, DEFAULT_ROWS), |size| {
                let rows = match size.ws_row {
                    0 => DEFAULT_ROWS,
                    rows => usize::from(rows),
                };
                (usize::from(size.ws_col).max(20), rows)
            })
        });
        Self::new(mode, Box::new(stderr), size)
    }

    /// Records one event and, except in `tty` mode (which redraws on its own), shows it.
    pub fn event(&self, event: BuildEvent) {
        match event {
            BuildEvent::Solving { vertices } => {
                self.steps.lock().expect("progress lock").total = vertices;
            }
            BuildEvent::Notice(message) => self.notice(&message),
            BuildEvent::Step { vertex, name, kind } => self.step_event(vertex, name, &kind),
        }
    }

    fn step_event(&self, vertex: Digest, name: String, kind: &ProgressKind) {
        let mut steps = self.steps.lock().expect("progress lock");
        let next = steps.order.len() + 1;
        if !steps.by_vertex.contains_key(&vertex) {
            steps.order.push(vertex);
        }
        let step = steps.by_vertex.entry(vertex).or_insert_with(|| Step {
            number: next,
            name,
            started: Instant::now(),
            state: StepState::Running,
            tail: Vec::new(),
            partial: Vec::new(),
        });
        let mut new_lines = Vec::new();
        match kind {
            ProgressKind::Started => {}
            ProgressKind::Cached => step.state = StepState::Cached,
            ProgressKind::Log(_, data) => {
                step.partial.extend_from_slice(data);
                while let Some(pos) = step.partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = step.partial.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    step.tail.push(line.clone());
                    if step.tail.len() > TAIL_LINES {
                        step.tail.remove(0);
                    }
                    new_lines.push(line);
                }
            }
            ProgressKind::Completed(took) if step.state != StepState::Cached => {
                step.state = StepState::Done(*took);
            }
            ProgressKind::Completed(_) => {}
            ProgressKind::Failed(_, took) => step.state = StepState::Failed(*took),
            ProgressKind::Cancelled => step.state = StepState::Cancelled,
        }
        let step = step.clone();
        drop(steps);
        let lines = match self.mode {
            ProgressMode::Plain => plain::lines(&step, kind, &new_lines),
            ProgressMode::Json => vec![json::line(&vertex, kind, &step)],
            ProgressMode::Rawjson => vec![rawjson::line(&vertex, kind, &step)],
            _ => return,
        };
        let mut out = self.out.lock().expect("progress lock");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    /// Shows a message that belongs to no step (pulls and pushes): a line in `plain` and
    /// `tty`, an object with `event: "message"` in `json`, nothing in `rawjson` (BuildKit
    /// sends no such thing), `quiet` and `none`.
    fn notice(&self, message: &str) {
        let line = match self.mode {
            ProgressMode::Quiet | ProgressMode::None | ProgressMode::Rawjson => return,
            ProgressMode::Tty => {
                // Lines written now would be drawn over: the display shows them.
                let mut steps = self.steps.lock().expect("progress lock");
                steps.notices.push(message.to_string());
                return;
            }
            ProgressMode::Json => {
                serde_json::json!({"event": "message", "message": message}).to_string()
            }
            _ => format!("=> {message}"),
        };
        let mut out = self.out.lock().expect("progress lock");
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Runs `build` while, in `tty` mode, the display redraws itself ten times a second;
    /// the last frame stays on screen.
    pub fn show_while<R>(&self, build: impl FnOnce() -> R) -> R {
        if self.mode != ProgressMode::Tty {
            return build();
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut drawn = 0;
        std::thread::scope(|scope| {
            let redraws = scope.spawn(|| {
                let mut drawn = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    drawn = self.draw(drawn, false);
                    std::thread::sleep(Duration::from_millis(100));
                }
                drawn
            });
            let result = build();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            drawn = redraws.join().unwrap_or(0);
            self.draw(drawn, true);
            result
        })
    }

    /// Replaces the `previous` lines of the last frame with a new one; returns its height.
    fn draw(&self, previous: usize, finished: bool) -> usize {
        let frame = {
            let steps = self.steps.lock().expect("progress lock");
            tty::frame(
                &steps,
                self.started.elapsed(),
                finished,
                self.width,
                self.height,
            )
        };
        let mut out = self.out.lock().expect("progress lock");
        let _ = write!(out, "{}", tty::replace(previous, &frame));
        let _ = out.flush();
        frame.len()
    }

    /// The last lines the step described as `description` printed.
    pub fn tail(&self, description: &str) -> Vec<String> {
        let steps = self.steps.lock().expect("progress lock");
        steps
            .by_vertex
            .values()
            .find(|s| s.name == description)
            .map(|s| s.tail.clone())
            .unwrap_or_default()
    }
}
