//! `--progress=json`: one JSON object per event, for tools.
//!
//! Every object has `vertex` (the step's digest), `step` (its number), `name` and `event`
//! (`started`, `cached`, `log`, `completed`, `failed` or `cancelled`); `log` adds `stream`
//! and `data`, `completed` and `failed` add `seconds`, and `failed` adds `error`.

use kiln_cache::Digest;
use kiln_solver::{LogStream, ProgressKind};
use serde_json::json;

use super::Step;

/// The JSON line for `kind`, which happened to `step` (vertex `vertex`).
pub(super) fn line(vertex: &Digest, kind: &ProgressKind, step: &Step) -> String {
    let mut value = json!({
        "vertex": vertex.to_string(),
        "step": step.number,
        "name": step.name,
    });
    let fields = match kind {
        ProgressKind::Started => json!({"event": "started"}),
        ProgressKind::Cached => json!({"event": "cached"}),
        ProgressKind::Log(stream, data) => json!({
            "event": "log",
            "stream": match stream {
                LogStream::Stdout => "stdout",
                LogStream::Stderr => "stderr",
            },
            "data": String::from_utf8_lossy(data),
        }),
        ProgressKind::Completed(took) => {
            json!({"event": "completed", "seconds": took.as_secs_f64()})
        }
        ProgressKind::Failed(error, took) => {
            json!({"event": "failed", "error": error, "seconds": took.as_secs_f64()})
        }
        ProgressKind::Cancelled => json!({"event": "cancelled"}),
    };
    if let (Some(object), Some(extra)) = (value.as_object_mut(), fields.as_object()) {
        object.extend(extra.clone());
    }
    value.to_string()
}
