//! BuildKit's parser golden files (`../shared/conformance/buildkit-parser/`), read in place.

use std::path::{Path, PathBuf};

use kiln_frontend::parser::{self, Heredoc};
use serde_json::Value;

fn data(sub: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/buildkit-parser")
        .join(sub);
    assert!(dir.exists(), "conformance data missing: {}", dir.display());
    dir
}

fn case_dirs(sub: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn json_rows(path: PathBuf) -> Vec<Value> {
    serde_json::from_slice::<Vec<Value>>(&std::fs::read(&path).unwrap()).unwrap()
}

fn heredoc_json(h: &Heredoc) -> Value {
    serde_json::json!({
        "name": h.name, "file_descriptor": h.file_descriptor, "expand": h.expand,
        "chomp": h.chomp, "content": h.content,
    })
}

/// Every `testfiles/<case>` and `heredoc/<case>` dumps exactly to its `result`.
#[test]
fn dumps_match_results() {
    let mut dirs = case_dirs("testfiles");
    assert_eq!(dirs.len(), 33);
    dirs.extend(case_dirs("heredoc"));
    let mut failures = Vec::new();
    for dir in &dirs {
        let source = std::fs::read(dir.join("Dockerfile")).unwrap();
        let expected = std::fs::read_to_string(dir.join("result")).unwrap();
        match parser::parse(&source) {
            Ok(doc) if doc.dump() == expected => {}
            Ok(doc) => failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{}",
                dir.display(),
                doc.dump()
            )),
            Err(e) => failures.push(format!("{}: {e}", dir.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn negative_cases_are_errors() {
    let dirs = case_dirs("testfiles-negative");
    assert_eq!(dirs.len(), 4);
    for dir in dirs {
        let source = std::fs::read(dir.join("Dockerfile")).unwrap();
        assert!(
            parser::parse(&source).is_err(),
            "{} parsed but must not",
            dir.display()
        );
    }
}

#[test]
fn line_numbers() {
    let doc = parser::parse(&std::fs::read(data("testfile-line/Dockerfile")).unwrap()).unwrap();
    let ranges: Vec<(usize, usize)> = doc
        .nodes
        .iter()
        .map(|n| (n.start_line, n.end_line))
        .collect();
    assert_eq!(ranges, vec![(5, 5), (11, 12), (17, 31)]);
}

/// `heredoc/<case>/heredocs.json`: per instruction, its lines, joined text and heredocs.
#[test]
fn heredoc_instructions() {
    let mut checked = 0;
    for dir in case_dirs("heredoc") {
        let doc = parser::parse(&std::fs::read(dir.join("Dockerfile")).unwrap()).unwrap();
        let rows = json_rows(dir.join("heredocs.json"));
        assert_eq!(rows.len(), doc.nodes.len(), "{}", dir.display());
        for (row, node) in rows.iter().zip(&doc.nodes) {
            let heredocs: Vec<Value> = node.heredocs.iter().map(heredoc_json).collect();
            let got = serde_json::json!({
                "start_line": node.start_line, "end_line": node.end_line,
                "original": node.original,
                "heredocs": if heredocs.is_empty() { Value::Null } else { Value::Array(heredocs) },
            });
            for key in ["start_line", "end_line", "original", "heredocs"] {
                assert_eq!(
                    got[key],
                    row[key],
                    "{} row {}: {key}",
                    dir.display(),
                    row["index"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} heredoc rows checked");
}

#[test]
fn parse_heredoc_words() {
    let rows = json_rows(data("heredoc/parse_heredoc.json"));
    let mut failures = Vec::new();
    for row in &rows {
        let input = row["input"].as_str().unwrap();
        let got = match parser::parse_heredoc(input) {
            Err(_) => serde_json::json!({"error": true, "heredoc": null}),
            Ok(h) => serde_json::json!({"error": false, "heredoc": h.as_ref().map(heredoc_json)}),
        };
        if got["error"] != row["error"] || got["heredoc"] != row["heredoc"] {
            failures.push(format!("{input:?}: expected {row} got {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn heredocs_from_line() {
    let rows = json_rows(data("heredoc/heredocs_from_line.json"));
    let mut failures = Vec::new();
    for row in &rows {
        let line = row["line"].as_str().unwrap();
        let docs = parser::heredocs_from_line(line).unwrap();
        let got: Vec<Value> = docs.iter().map(heredoc_json).collect();
        let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
        let expected: Vec<&str> = row["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        if names != expected || Value::Array(got.clone()) != row["heredocs"] {
            failures.push(format!(
                "{line:?}: expected {} got {got:?}",
                row["heredocs"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
