//! `--progress=tty`: BuildKit's live display. A header with the elapsed time and how many
//! steps are finished, one line per step with its state and duration, and the last lines
//! of output of the steps still running; each frame replaces the previous one.

use std::time::Duration;

use super::{StepState, Steps};

/// Output lines shown under each running step.
const RUNNING_TAIL: usize = 6;

/// Messages of no step (pulls, pushes) shown at once: the latest ones.
const NOTICES_SHOWN: usize = 6;

/// The lines of one frame, each cut to `width` characters.
pub(super) fn frame(steps: &Steps, elapsed: Duration, finished: bool, width: usize) -> Vec<String> {
    let done = steps
        .by_vertex
        .values()
        .filter(|s| s.state != StepState::Running)
        .count();
    let mut lines = vec![format!(
        "[+] Building {:.1}s ({done}/{}){}",
        elapsed.as_secs_f64(),
        steps.total.max(steps.order.len()),
        if finished { " FINISHED" } else { "" }
    )];
    let first = steps.notices.len().saturating_sub(NOTICES_SHOWN);
    for notice in &steps.notices[first..] {
        lines.push(cut(&format!(" => {notice}"), width));
    }
    for vertex in &steps.order {
        let step = &steps.by_vertex[vertex];
        let (prefix, seconds) = match step.state {
            StepState::Running => ("", step.started.elapsed()),
            StepState::Cached => ("CACHED ", Duration::ZERO),
            StepState::Done(took) => ("", took),
            StepState::Failed(took) => ("ERROR ", took),
            StepState::Cancelled => ("CANCELED ", step.started.elapsed()),
        };
        lines.push(with_duration(
            &format!(" => {prefix}{}", step.name),
            seconds,
            width,
        ));
        if step.state == StepState::Running || matches!(step.state, StepState::Failed(_)) {
            let start = step.tail.len().saturating_sub(RUNNING_TAIL);
            for line in &step.tail[start..] {
                lines.push(cut(&format!(" => => # {line}"), width));
            }
        }
    }
    lines
}

/// `text` with the duration right-aligned at `width`, `text` cut to make room.
fn with_duration(text: &str, seconds: Duration, width: usize) -> String {
    let duration = format!("{:.1}s", seconds.as_secs_f64());
    let room = width.saturating_sub(duration.len() + 1);
    let text = cut(text, room);
    let pad = width.saturating_sub(text.chars().count() + duration.len());
    format!("{text}{}{duration}", " ".repeat(pad.max(1)))
}

/// The first `width` characters of `text`, so no line wraps (which would break redraws).
fn cut(text: &str, width: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(width)
        .collect()
}

/// Terminal output that replaces the `previous` lines just written with `frame`.
pub(super) fn replace(previous: usize, frame: &[String]) -> String {
    let mut out = String::new();
    if previous > 0 {
        out.push_str(&format!("\x1b[{previous}A"));
    }
    for line in frame {
        out.push_str("\r\x1b[2K");
        out.push_str(line);
        out.push('\n');
    }
    // Whatever the previous frame had below this one.
    out.push_str("\x1b[J");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use kiln_cache::Digest;

    use super::super::Step;
    use super::*;

    fn step(number: usize, name: &str, state: StepState, tail: &[&str]) -> Step {
        Step {
            number,
            name: name.into(),
            started: Instant::now(),
            state,
            tail: tail.iter().map(|s| s.to_string()).collect(),
            partial: Vec::new(),
        }
    }

    #[test]
    fn frames_look_like_buildkits() {
        let mut steps = Steps {
            total: 4,
            ..Steps::default()
        };
        let entries = [
            step(1, "[stage-0 1/3] FROM busybox:1", StepState::Cached, &[]),
            step(
                2,
                "[stage-0 2/3] RUN make",
                StepState::Done(Duration::from_millis(1250)),
                &["hidden once done"],
            ),
            step(3, "[stage-0 3/3] RUN test", StepState::Running, &["a", "b"]),
        ];
        for (i, entry) in entries.into_iter().enumerate() {
            let vertex = Digest::of(&[i as u8]);
            steps.order.push(vertex);
            steps.by_vertex.insert(vertex, entry);
        }
        let frame = frame(&steps, Duration::from_millis(2100), false, 50);
        assert_eq!(
            frame,
            [
                "[+] Building 2.1s (2/4)",
                " => CACHED [stage-0 1/3] FROM busybox:1       0.0s",
                " => [stage-0 2/3] RUN make                    1.2s",
                " => [stage-0 3/3] RUN test                    0.0s",
                " => => # a",
                " => => # b",
            ]
        );
        assert!(frame.iter().all(|l| l.chars().count() <= 50));
        let finished = super::frame(&steps, Duration::from_secs(3), true, 50);
        assert!(finished[0].ends_with(" FINISHED"), "{finished:?}");
        steps.notices = (0..8).map(|i| format!("pushed layer {i}")).collect();
        let with_notices = super::frame(&steps, Duration::from_secs(3), true, 50);
        assert_eq!(with_notices[1], " => pushed layer 2", "the latest six");
        assert_eq!(with_notices[6], " => pushed layer 7");
    }

    #[test]
    fn long_lines_are_cut_and_redraws_move_up() {
        assert_eq!(cut("abcdef\tg", 7), "abcdef ");
        assert_eq!(
            with_duration("a very long step name", Duration::ZERO, 12),
            "a very  0.0s"
        );
        let out = replace(3, &["x".to_string()]);
        assert!(out.starts_with("\x1b[3A\r\x1b[2Kx\n"), "{out:?}");
        assert!(out.ends_with("\x1b[J"));
    }
}
