//! moby/patternmatcher's test tables (`../shared/conformance/dockerignore/`),
//! read in place; every row must pass.

use kiln_patterns::{MatchInfo, PatternMatcher, clean, read_ignore_file};
use serde_json::Value;
use std::path::PathBuf;

fn table(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/dockerignore")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("conformance data missing: {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Matches through the parent-results API the way a directory walker does:
/// each ancestor first, feeding its result to the next.
fn match_walking(pm: &PatternMatcher, path: &str) -> bool {
    let mut info = MatchInfo::default();
    let parts: Vec<&str> = path.split('/').collect();
    for end in 1..parts.len() {
        let prefix = parts[..end].join("/");
        info = pm.matches_using_parent_results(&prefix, &info).1;
    }
    pm.matches_using_parent_results(path, &info).0
}

fn check_match_rows(name: &str) -> usize {
    let rows = table(name);
    let mut failures = Vec::new();
    for row in &rows {
        let patterns = strings(&row["patterns"]);
        let path = row["path"].as_str().unwrap();
        let want_error = row["error"].as_bool().unwrap();
        let want = row["match"].as_bool().unwrap();
        let pm = match PatternMatcher::new(&patterns) {
            Ok(pm) => pm,
            Err(e) => {
                if !want_error {
                    failures.push(format!("{patterns:?}: unexpected error {e}"));
                }
                continue;
            }
        };
        if want_error {
            failures.push(format!("{patterns:?} vs {path:?}: expected an error"));
            continue;
        }
        let got = if row["api"] == "Matches" {
            let cleaned = clean(path);
            cleaned != "." && pm.matches_or_parent_matches(&cleaned)
        } else {
            let direct = pm.matches_or_parent_matches(path);
            let no_info = pm
                .matches_using_parent_results(path, &MatchInfo::default())
                .0;
            let walked = match_walking(&pm, path);
            if direct != no_info || direct != walked {
                failures.push(format!(
                    "{patterns:?} vs {path:?}: APIs disagree ({direct}, {no_info}, {walked})"
                ));
            }
            direct
        };
        if got != want {
            failures.push(format!("{patterns:?} vs {path:?}: got {got}, want {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} rows fail:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    rows.len()
}

#[test]
fn upstream_match_table() {
    assert_eq!(check_match_rows("matches.json"), 138);
}

#[test]
fn generated_match_table() {
    assert_eq!(check_match_rows("matches-generated.json"), 1010);
}

#[test]
fn compile_table() {
    let rows = table("compile.json");
    for row in &rows {
        let pattern = row["pattern"].as_str().unwrap();
        let pm = PatternMatcher::new([pattern]).unwrap();
        let compiled = &pm.patterns()[0];
        assert_eq!(compiled.match_type(), row["match_type"], "{pattern}");
        assert_eq!(compiled.regex_source(), row["regexp"].as_str(), "{pattern}");
    }
    assert_eq!(rows.len(), 21);
}

#[test]
fn new_table() {
    let rows = table("new.json");
    for row in &rows {
        let patterns = strings(&row["patterns"]);
        let result = PatternMatcher::new(&patterns);
        if row["error"].as_bool().unwrap() {
            assert!(result.is_err(), "{patterns:?}");
            continue;
        }
        let pm = result.unwrap();
        if let Some(count) = row["pattern_count"].as_u64() {
            assert_eq!(pm.patterns().len() as u64, count, "{patterns:?}");
        }
        if row["exclusions"] == true {
            assert!(pm.exclusions(), "{patterns:?}");
        }
    }
    assert_eq!(rows.len(), 6);
}

#[test]
fn ignorefile_tables() {
    let mut count = 0;
    for name in ["ignorefile.json", "ignorefile-generated.json"] {
        for row in table(name) {
            let text = row["text"].as_str().unwrap_or("");
            let got = read_ignore_file(text.as_bytes());
            if row["error"].as_bool().unwrap() {
                assert!(got.is_err(), "{text:?}");
            } else {
                assert_eq!(got.unwrap(), strings(&row["patterns"]), "{text:?}");
            }
            count += 1;
        }
    }
    assert_eq!(count, 28);
}
