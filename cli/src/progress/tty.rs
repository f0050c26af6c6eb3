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
///
/// A live frame (`finished` false) is at most `height - 1` lines, so that it and the
/// line the cursor waits on fit the terminal and the next redraw can move up over all
/// of it. When everything does not fit, as in BuildKit: finished steps are left out,
/// oldest first; then messages of no step, oldest first; then output under running
/// steps is cut, longest tail first; then the oldest running steps. The header always
/// stays. The last frame (`finished`) shows everything, as BuildKit's does.
pub(super) fn frame(
    steps: &Steps,
    elapsed: Duration,
    finished: bool,
    width: usize,
    height: usize,
) -> Vec<String> {
    let done = steps
        .by_vertex
        .values()
        .filter(|s| s.state != StepState::Running)
        .count();
    let header = cut(
        &format!(
            "[+] Building {:.1}s ({done}/{}){}",
            elapsed.as_secs_f64(),
            steps.total.max(steps.order.len()),
            if finished { " FINISHED" } else { "" }
        ),
        width,
    );
    let first = steps.notices.len().saturating_sub(NOTICES_SHOWN);
    let mut notices: Vec<String> = steps.notices[first..]
        .iter()
        .map(|notice| cut(&format!(" => {notice}"), width))
        .collect();
    let mut entries: Vec<Entry> = steps
        .order
        .iter()
        .map(|vertex| {
            let step = &steps.by_vertex[vertex];
            let (prefix, seconds) = match step.state {
                StepState::Running => ("", step.started.elapsed()),
                StepState::Cached => ("CACHED ", Duration::ZERO),
                StepState::Done(took) => ("", took),
                StepState::Failed(took) => ("ERROR ", took),
                StepState::Cancelled => ("CANCELED ", step.started.elapsed()),
            };
            let running = step.state == StepState::Running;
            let tail = if running || matches!(step.state, StepState::Failed(_)) {
                let start = step.tail.len().saturating_sub(RUNNING_TAIL);
                step.tail[start..]
                    .iter()
                    .map(|line| cut(&format!(" => => # {line}"), width))
                    .collect()
            } else {
                Vec::new()
            };
            Entry {
                running,
                line: with_duration(&format!(" => {prefix}{}", step.name), seconds, width),
                tail,
            }
        })
        .collect();
    if !finished {
        // The header takes one line, the cursor waits on the one after the frame.
        fit(&mut notices, &mut entries, height.saturating_sub(2));
    }
    let mut lines = vec![header];
    lines.append(&mut notices);
    for entry in entries {
        lines.push(entry.line);
        lines.extend(entry.tail);
    }
    lines
}

/// One step in a frame: its line and the output shown under it.
struct Entry {
    running: bool,
    line: String,
    tail: Vec<String>,
}

/// Leaves lines out of `notices` and `entries` until they take at most `room` lines:
/// finished steps (oldest first), then notices (oldest first), then output lines of
/// running steps (the oldest line of the longest tail, the oldest step's among equals),
/// then running steps (oldest first).
fn fit(notices: &mut Vec<String>, entries: &mut Vec<Entry>, room: usize) {
    let used = notices.len() + entries.iter().map(|e| 1 + e.tail.len()).sum::<usize>();
    let mut excess = used.saturating_sub(room);
    while excess > 0 {
        let Some(oldest) = entries.iter().position(|e| !e.running) else {
            break;
        };
        excess = excess.saturating_sub(1 + entries.remove(oldest).tail.len());
    }
    let dropped = excess.min(notices.len());
    notices.drain(..dropped);
    excess -= dropped;
    while excess > 0 {
        // `max_by_key` picks the last of equals: search from the end for the oldest.
        let Some(longest) = entries
            .iter_mut()
            .rev()
            .max_by_key(|e| e.tail.len())
            .filter(|e| !e.tail.is_empty())
        else {
            break;
        };
        longest.tail.remove(0);
        excess -= 1;
    }
    let dropped = excess.min(entries.len());
    entries.drain(..dropped);
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
        let frame = frame(&steps, Duration::from_millis(2100), false, 50, 24);
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
        let finished = super::frame(&steps, Duration::from_secs(3), true, 50, 24);
        assert!(finished[0].ends_with(" FINISHED"), "{finished:?}");
        steps.notices = (0..8).map(|i| format!("pushed layer {i}")).collect();
        let with_notices = super::frame(&steps, Duration::from_secs(3), true, 50, 24);
        assert_eq!(with_notices[1], " => pushed layer 2", "the latest six");
        assert_eq!(with_notices[6], " => pushed layer 7");
    }

    /// 40 steps: 1 to 30 finished (with tails, which finished steps do not show),
    /// 31 to 34 running with eight output lines each, the rest finished.
    fn forty_steps() -> Steps {
        let mut steps = Steps {
            total: 40,
            ..Steps::default()
        };
        let output: Vec<String> = (0..8).map(|i| format!("line {i}")).collect();
        let output: Vec<&str> = output.iter().map(String::as_str).collect();
        for number in 1..=40 {
            let state = if (31..=34).contains(&number) {
                StepState::Running
            } else {
                StepState::Done(Duration::from_millis(100))
            };
            let vertex = Digest::of(&[number as u8]);
            steps.order.push(vertex);
            steps.by_vertex.insert(
                vertex,
                step(number, &format!("step {number}"), state, &output),
            );
        }
        steps
    }

    /// The step numbers a frame shows, in order.
    fn shown(frame: &[String]) -> Vec<usize> {
        frame
            .iter()
            .filter_map(|l| l.strip_prefix(" => step "))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn live_frames_fit_the_terminal_and_keep_running_steps() {
        let steps = forty_steps();
        let frame = frame(&steps, Duration::from_secs(5), false, 60, 10);
        assert!(frame.len() <= 10, "{frame:#?}");
        assert!(
            frame[0].starts_with("[+] Building 5.0s (36/40)"),
            "{frame:#?}"
        );
        assert_eq!(shown(&frame), [31, 32, 33, 34], "{frame:#?}");
        // Nine lines: the header, four running steps and the latest output of the
        // oldest ones, one line each.
        assert_eq!(frame.len(), 9, "{frame:#?}");
        assert_eq!(frame[2], " => => # line 7");
        assert!(frame[3].starts_with(" => step 32 "), "{frame:#?}");
    }

    #[test]
    fn finished_steps_collapse_oldest_first() {
        let mut steps = forty_steps();
        for vertex in &steps.order {
            let step = steps.by_vertex.get_mut(vertex).unwrap();
            if step.state == StepState::Running {
                step.tail.clear();
            }
        }
        let frame = frame(&steps, Duration::from_secs(5), false, 60, 10);
        assert_eq!(frame.len(), 9, "{frame:#?}");
        // Four running steps leave room for the four newest finished ones.
        assert_eq!(
            shown(&frame),
            [31, 32, 33, 34, 37, 38, 39, 40],
            "{frame:#?}"
        );
        let roomy = super::frame(&steps, Duration::from_secs(5), false, 60, 40);
        assert_eq!(shown(&roomy), (3..=40).collect::<Vec<_>>(), "{roomy:#?}");
    }

    #[test]
    fn tails_are_cut_before_running_steps_are_dropped() {
        let steps = forty_steps();
        let frame = frame(&steps, Duration::from_secs(5), false, 60, 30);
        assert_eq!(frame.len(), 29, "{frame:#?}");
        assert_eq!(shown(&frame), [31, 32, 33, 34], "{frame:#?}");
        // Six lines under each running step fill the frame: the latest ones.
        assert_eq!(frame[2], " => => # line 2", "{frame:#?}");
        let tiny = super::frame(&steps, Duration::from_secs(5), false, 60, 4);
        assert_eq!(tiny.len(), 3, "{tiny:#?}");
        assert_eq!(shown(&tiny), [33, 34], "the newest running steps");
        let header_only = super::frame(&steps, Duration::from_secs(5), false, 60, 1);
        assert_eq!(header_only.len(), 1, "{header_only:#?}");
    }

    #[test]
    fn the_last_frame_shows_everything() {
        let steps = forty_steps();
        let frame = frame(&steps, Duration::from_secs(5), true, 60, 10);
        assert_eq!(shown(&frame), (1..=40).collect::<Vec<_>>());
        assert_eq!(frame.len(), 1 + 40 + 4 * RUNNING_TAIL);
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
