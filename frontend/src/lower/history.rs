//! Image history entries, worded as BuildKit words them (Go's `%q`/`%v` formatting included,
//! so `docker history` reads the same for kiln and BuildKit images).

use kiln_image::{HealthConfig, History, Image};

use crate::instructions::format_go_duration;
use crate::parser::go_quote;

/// The comment BuildKit puts on every Dockerfile history entry.
const COMMENT: &str = "buildkit.dockerfile.v0";

/// Appends a history entry; `layer` says whether the instruction changes the filesystem
/// (RUN, COPY, ADD get BuildKit's ` # buildkit` suffix).
pub(super) fn commit(image: &mut Image, created_by: String, layer: bool, buildkit_suffix: bool) {
    let created_by = if buildkit_suffix {
        format!("{created_by} # buildkit")
    } else {
        created_by
    };
    image.history.push(History {
        created_by,
        comment: COMMENT.into(),
        empty_layer: !layer,
        ..History::default()
    });
}

/// Go's `%q` of a `[]string`: `["a" "b c"]`.
pub(super) fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b c]`.
pub(super) fn plain_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `%+v` of a `HealthcheckConfig`, as BuildKit records HEALTHCHECK:
/// `{Test:[CMD-SHELL true] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}`.
pub(super) fn healthcheck(health: &HealthConfig) -> String {
    format!(
        "{{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        plain_list(&health.test),
        format_go_duration(health.interval),
        format_go_duration(health.timeout),
        format_go_duration(health.start_period),
        format_go_duration(health.start_interval),
        health.retries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        let v = vec!["/bin/sh".to_string(), "-c".into(), "echo \"hi\"".into()];
        assert_eq!(quoted_list(&v), r#"["/bin/sh" "-c" "echo \"hi\""]"#);
        assert_eq!(plain_list(&v[..2]), "[/bin/sh -c]");
        let health = HealthConfig {
            test: vec!["CMD-SHELL".into(), "curl -f http://x/".into()],
            interval: 30_000_000_000,
            retries: 3,
            ..HealthConfig::default()
        };
        assert_eq!(
            healthcheck(&health),
            "{Test:[CMD-SHELL curl -f http://x/] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}"
        );
    }
}
