//! `--progress=plain`: BuildKit's line format. Each step is numbered `#N` in the order it
//! starts; its output lines carry the step number and the seconds since it started.

use kiln_solver::ProgressKind;

use super::{Step, StepState};

/// The lines to print for `kind` happening to `step`; `output` holds the step's newly
/// completed output lines.
pub(super) fn lines(step: &Step, kind: &ProgressKind, output: &[String]) -> Vec<String> {
    let number = step.number;
    match kind {
        ProgressKind::Started => vec![format!("#{number} {}", step.name)],
        ProgressKind::Cached => vec![format!("#{number} CACHED")],
        ProgressKind::Log(..) => {
            let elapsed = step.started.elapsed().as_secs_f64();
            output
                .iter()
                .map(|line| format!("#{number} {elapsed:.3} {line}"))
                .collect()
        }
        ProgressKind::Completed(_) if step.state == StepState::Cached => Vec::new(),
        ProgressKind::Completed(took) => {
            vec![format!("#{number} DONE {:.1}s", took.as_secs_f64())]
        }
        ProgressKind::Failed(message, took) => vec![
            format!("#{number} ERROR: {message}"),
            format!("#{number} FAILED after {:.1}s", took.as_secs_f64()),
        ],
        ProgressKind::Cancelled => vec![format!("#{number} CANCELED")],
    }
}
