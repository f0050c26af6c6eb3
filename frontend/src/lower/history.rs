//! Image history entries, worded as BuildKit words them (Go's `%q`/`%v` formatting included,
//! so `docker history` reads the same for kiln and BuildKit images).

use kiln_image::{History, Image};

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

/// Go's `%v` of a `map[string]struct{}`: `map[443/tcp:{} 80/tcp:{}]` (keys sorted).
pub(super) fn set_map<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let entries: Vec<String> = keys.map(|k| format!("{k}:{{}}")).collect();
    format!("map[{}]", entries.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        let v = vec!["/bin/sh".to_string(), "-c".into(), "echo \"hi\"".into()];
        assert_eq!(quoted_list(&v), r#"["/bin/sh" "-c" "echo \"hi\""]"#);
        assert_eq!(plain_list(&v[..2]), "[/bin/sh -c]");
        let keys = ["443/tcp".to_string(), "80/tcp".to_string()];
        assert_eq!(set_map(keys.iter()), "map[443/tcp:{} 80/tcp:{}]");
    }
}
