//! `--progress=rawjson`: buildx's raw JSON, one BuildKit `SolveStatus` object per line.
//!
//! A step's state goes in `vertexes` (`digest`, `name`, `started`, `completed`, `cached`,
//! `error`), its output in `logs` (`vertex`, `stream` 1 or 2, base64 `data`, `timestamp`),
//! with RFC 3339 times, as BuildKit's client marshals them.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use kiln_cache::Digest;
use kiln_solver::{LogStream, ProgressKind};
use serde_json::json;

use super::{Step, StepState};

/// The error BuildKit records for a cancelled vertex.
const CANCELED: &str = "context canceled";

/// The `SolveStatus` line for `kind`, which happened to `step` (vertex `vertex`).
pub(super) fn line(vertex: &Digest, kind: &ProgressKind, step: &Step) -> String {
    let now = SystemTime::now();
    let started = rfc3339(now - step.started.elapsed());
    let mut state = json!({
        "digest": vertex.to_string(),
        "name": step.name,
        "started": started,
    });
    match kind {
        ProgressKind::Log(stream, data) => {
            let stream = match stream {
                LogStream::Stdout => 1,
                LogStream::Stderr => 2,
            };
            let log = json!({
                "vertex": vertex.to_string(),
                "stream": stream,
                "data": base64::engine::general_purpose::STANDARD.encode(data),
                "timestamp": rfc3339(now),
            });
            return json!({ "logs": [log] }).to_string();
        }
        ProgressKind::Started => {}
        ProgressKind::Cached => state["cached"] = true.into(),
        ProgressKind::Completed(_) => {
            state["completed"] = rfc3339(now).into();
            if step.state == StepState::Cached {
                state["cached"] = true.into();
            }
        }
        ProgressKind::Failed(error, _) => {
            state["completed"] = rfc3339(now).into();
            state["error"] = error.as_str().into();
        }
        ProgressKind::Cancelled => {
            state["completed"] = rfc3339(now).into();
            state["error"] = CANCELED.into();
        }
    }
    json!({ "vertexes": [state] }).to_string()
}

/// `time` in RFC 3339 with nanoseconds, as Go marshals a `time.Time` in UTC.
fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let seconds = kiln_image::format_rfc3339(since_epoch.as_secs());
    let seconds = seconds.strip_suffix('Z').unwrap_or(&seconds);
    format!("{seconds}.{:09}Z", since_epoch.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        let time = SystemTime::UNIX_EPOCH + Duration::new(86_400 + 61, 5);
        assert_eq!(rfc3339(time), "1970-01-02T00:01:01.000000005Z");
    }
}
