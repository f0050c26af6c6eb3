//! Instruction flags (`--name=value`), checked the way BuildKit's `BFlags` checks them: each
//! instruction declares the flags it accepts, and anything else is an error.

use std::collections::BTreeMap;

/// The kind of value a flag takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    /// `--link`, `--link=true|false`.
    Bool,
    /// `--from=x`, given at most once.
    String,
    /// `--mount=…`, repeatable; every value is kept.
    Strings,
}

/// The flags one instruction was given, parsed against what it accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    /// Parses `raw` (the node's flags, `--name[=value]`) against the accepted `spec`.
    pub fn parse(raw: &[String], spec: &[(&'static str, FlagKind)]) -> Result<Flags, String> {
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for arg in raw {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("Arg should start with -- : {arg}"));
            };
            if body.is_empty() {
                break;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(key, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                return Err(unknown_flag(name, spec));
            };
            let seen = values.entry(key).or_default();
            if !seen.is_empty() && kind != FlagKind::Strings {
                return Err(format!("Duplicate flag specified: {name}"));
            }
            let value = match (kind, value) {
                (FlagKind::Bool, None) => "true".to_string(),
                (FlagKind::Bool, Some("")) | (_, None) => {
                    return Err(format!("Missing a value on flag: {name}"));
                }
                (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    b @ ("true" | "false") => b.to_string(),
                    _ => {
                        return Err(format!("Expecting boolean value for flag {name}, not: {v}"));
                    }
                },
                (_, Some(v)) => v.to_string(),
            };
            seen.push(value);
        }
        Ok(Flags { values })
    }

    /// The value of a string flag, if given.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Whether a bool flag is set to true.
    pub fn bool(&self, name: &str) -> bool {
        self.string(name) == Some("true")
    }

    /// The value of a bool flag, or `None` when it was not given.
    pub fn optional_bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }

    /// Every value of a repeatable flag, in order.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

/// BuildKit's message for an unknown flag, with a suggestion when one accepted flag is close.
fn unknown_flag(name: &str, spec: &[(&'static str, FlagKind)]) -> String {
    let closest = spec
        .iter()
        .map(|(n, _)| (edit_distance(name, n), *n))
        .filter(|(d, n)| *d <= 2 && *d < n.len())
        .min();
    match closest {
        Some((_, n)) => format!("Unknown flag: {name} (did you mean {n}?)"),
        None => format!("Unknown flag: {name}"),
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &[(&str, FlagKind)] = &[
        ("from", FlagKind::String),
        ("link", FlagKind::Bool),
        ("mount", FlagKind::Strings),
    ];

    fn parse(raw: &[&str]) -> Result<Flags, String> {
        let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        Flags::parse(&raw, SPEC)
    }

    #[test]
    fn values_of_each_kind() {
        let f = parse(&["--from=a b", "--link", "--mount=x", "--mount=y"]).unwrap();
        assert_eq!(f.string("from"), Some("a b"));
        assert!(f.bool("link"));
        assert_eq!(f.strings("mount"), ["x", "y"]);
        assert_eq!(
            parse(&["--link=FALSE"]).unwrap().optional_bool("link"),
            Some(false)
        );
        assert_eq!(parse(&[]).unwrap().optional_bool("link"), None);
    }

    #[test]
    fn errors_match_buildkit() {
        assert_eq!(
            parse(&["--frm=x"]).unwrap_err(),
            "Unknown flag: frm (did you mean from?)"
        );
        assert_eq!(parse(&["--chown=1"]).unwrap_err(), "Unknown flag: chown");
        assert_eq!(
            parse(&["--from=a", "--from=b"]).unwrap_err(),
            "Duplicate flag specified: from"
        );
        assert_eq!(
            parse(&["--from"]).unwrap_err(),
            "Missing a value on flag: from"
        );
        assert_eq!(
            parse(&["--link="]).unwrap_err(),
            "Missing a value on flag: link"
        );
        assert_eq!(
            parse(&["--link=yes"]).unwrap_err(),
            "Expecting boolean value for flag link, not: yes"
        );
    }
}
