//! BuildKit's shell lexer tables (`shared/conformance/buildkit-shell/`, see the README there),
//! read straight from the shared folder and run against `kiln_frontend::shell`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln_frontend::shell::Lexer;
use serde::Deserialize;

fn data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/buildkit-shell")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Fails with every collected failure at once.
fn report(table: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{table}: {} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `TestShellParser4EnvVars`: the `A` and `U` rows (this is not Windows) through
/// `ProcessWord` with a fixed environment.
#[test]
fn env_var_test() {
    let env: Vec<(String, String)> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let lex = Lexer::new('\\');

    let text = data("envVarTest");
    let mut failures = Vec::new();
    let mut per_platform: BTreeMap<String, usize> = BTreeMap::new();
    let (mut checked, mut error_rows, mut empty_rows) = (0, 0, 0);
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        if raw.starts_with('#') {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 3, "line {line_no}: {line:?}");
        let (platform, input, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        assert!(
            matches!(platform, "A" | "U" | "W"),
            "line {line_no}: platform {platform:?}"
        );
        *per_platform.entry(platform.to_string()).or_default() += 1;
        if platform == "W" {
            continue;
        }
        checked += 1;
        let got = lex.process_word(input, &env);
        if expected == "error" {
            error_rows += 1;
            if let Ok(out) = got {
                failures.push(format!(
                    "line {line_no}: {input:?} should fail, gave {out:?}"
                ));
            }
        } else {
            if expected.is_empty() {
                empty_rows += 1;
            }
            match got {
                Ok(out) if out == expected => {}
                other => failures.push(format!(
                    "line {line_no}: {input:?} should give {expected:?}, gave {other:?}"
                )),
            }
        }
    }
    report("envVarTest", &failures);
    assert_eq!(
        per_platform,
        BTreeMap::from([("A".into(), 226), ("U".into(), 2), ("W".into(), 2)])
    );
    assert_eq!(checked, 228, "A and U rows checked");
    assert_eq!(error_rows, 36, "error rows");
    assert_eq!(empty_rows, 57, "rows expecting the empty string");
}

/// `TestShellParser4Words`: `ProcessWords` with the cumulative `ENV` lines as environment; an
/// error counts as the single word `error`.
#[test]
fn words_test() {
    let lex = Lexer::new('\\');
    let text = data("wordsTest");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut failures = Vec::new();
    let (mut checked, mut env_lines, mut comments) = (0, 0, 0);
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.starts_with('#') {
            comments += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            // Go takes line[3:], which keeps the space, then trims leading spaces.
            let def = rest.trim_start_matches(' ');
            let (name, value) = def.split_once('=').unwrap_or((def, ""));
            env.push((name.to_string(), value.to_string()));
            env_lines += 1;
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "line {line_no}: {line:?}");
        let input = fields[0].trim();
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        checked += 1;
        let got = lex
            .process_words(input, &env)
            .unwrap_or_else(|_| vec!["error".to_string()]);
        if got != expected {
            failures.push(format!(
                "line {line_no}: {input:?} should give {expected:?}, gave {got:?}"
            ));
        }
    }
    report("wordsTest", &failures);
    assert_eq!(checked, 24, "test rows");
    assert_eq!(env_lines, 4, "ENV lines");
    assert_eq!(comments, 2, "comment lines");
}

#[derive(Deserialize)]
struct LexCase {
    source: String,
    input: String,
    env: BTreeMap<String, String>,
    expected: Option<String>,
    error: bool,
    error_contains: Option<String>,
    matched: Option<Vec<String>>,
    unmatched: Option<Vec<String>>,
}

/// The tables of `lex_test.go`: `ProcessWordWithMatches` with each row's environment.
#[test]
fn lex_cases() {
    let lex = Lexer::new('\\');
    let rows: Vec<LexCase> =
        serde_json::from_str(&data("lex_cases.json")).expect("lex_cases.json parses");
    let mut failures = Vec::new();
    let mut per_source: BTreeMap<String, usize> = BTreeMap::new();
    for (index, row) in rows.iter().enumerate() {
        *per_source.entry(row.source.clone()).or_default() += 1;
        let what = format!(
            "row {index} ({}) {:?} env {:?}",
            row.source, row.input, row.env
        );
        let got = lex.process_word_with_matches(&row.input, &row.env);
        if row.error {
            match got {
                Ok(out) => failures.push(format!("{what}: should fail, gave {:?}", out.result)),
                Err(err) => {
                    if let Some(needle) = &row.error_contains
                        && !err.message.contains(needle.as_str())
                    {
                        failures.push(format!(
                            "{what}: error {:?} does not contain {needle:?}",
                            err.message
                        ));
                    }
                }
            }
            continue;
        }
        let out = match got {
            Ok(out) => out,
            Err(err) => {
                failures.push(format!("{what}: unexpected error {:?}", err.message));
                continue;
            }
        };
        let expected = row.expected.as_deref().unwrap_or_default();
        if out.result != expected {
            failures.push(format!(
                "{what}: should give {expected:?}, gave {:?}",
                out.result
            ));
        }
        let sets = [
            ("matched", &row.matched, &out.matched),
            ("unmatched", &row.unmatched, &out.unmatched),
        ];
        for (name, want, got) in sets {
            if let Some(want) = want {
                let want: BTreeSet<String> = want.iter().cloned().collect();
                if &want != got {
                    failures.push(format!("{what}: {name} should be {want:?}, was {got:?}"));
                }
            }
        }
    }
    report("lex_cases.json", &failures);
    assert_eq!(rows.len(), 56, "rows");
    assert_eq!(
        per_source,
        BTreeMap::from([
            ("TestProcessWithMatches".into(), 47),
            ("TestShellParserMandatoryEnvVars".into(), 6),
            ("TestProcessWithMatchesPlatform".into(), 3),
        ])
    );
}
