//! The Dockerfile parser, a faithful port of BuildKit's `frontend/dockerfile/parser`.
//!
//! [`parse`] turns bytes into a [`Document`]: parser directives, and one [`Node`] per
//! instruction with its flags, arguments (split per instruction the way BuildKit does),
//! heredocs and line range. Nothing is expanded here; see [`crate::shell`].
//!
//! Input that is not valid UTF-8 is read with replacement characters.

mod ast;
mod dump;
mod heredoc;
mod line_parsers;

pub use ast::{Directives, Document, Heredoc, Node};
pub use heredoc::{heredocs_from_line, parse_heredoc};
pub use kiln_solver::go_quote;

use crate::error::{Error, Location, Result};

/// Parses a Dockerfile.
pub fn parse(source: &[u8]) -> Result<Document> {
    let text = String::from_utf8_lossy(source);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Parser {
        lines: text.split_inclusive('\n'),
        directives: DirectiveState::default(),
        line_no: 0,
    }
    .run()
}

/// Parser-directive state: the directives seen so far, and whether they may still appear.
#[derive(Default)]
struct DirectiveState {
    found: Directives,
    seen: Vec<String>,
    done: bool,
}

impl DirectiveState {
    /// Looks at a line for `# key=value`; the first line that is not one ends the directives.
    fn observe(&mut self, line: &str) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let Some((key, value)) = line
            .strip_prefix('#')
            .and_then(|rest| parse_directive(rest.trim_start()))
        else {
            self.done = true;
            return Ok(());
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(());
        }
        if self.seen.contains(&key) {
            return Err(Error::new(format!(
                "only one {key} parser directive can be used"
            )));
        }
        self.seen.push(key.clone());
        match key.as_str() {
            "escape" => {
                self.found.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(Error::new(format!(
                            "invalid escape token '{other}' does not match ` or \\"
                        )));
                    }
                }
            }
            "syntax" => self.found.syntax = Some(value.to_string()),
            _ => self.found.check = Some(value.to_string()),
        }
        Ok(())
    }
}

/// `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` where `\s` is RE2's `[\t\n\f\r ]`.
fn parse_directive(s: &str) -> Option<(&str, &str)> {
    let re2_space = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ');
    let key_len = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(s.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let (key, rest) = s.split_at(key_len);
    let value = rest.trim_start_matches(re2_space).strip_prefix('=')?;
    let value = value
        .trim_start_matches(re2_space)
        .trim_end_matches(re2_space);
    (!value.is_empty()).then_some((key, value))
}

/// Go's `bytes.TrimRight(line, "\r\n")`.
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// A comment line: `#` after optional leading whitespace.
fn is_comment(raw: &str) -> bool {
    trim_newline(raw).trim_start().starts_with('#')
}

struct Parser<'a, I: Iterator<Item = &'a str>> {
    lines: I,
    directives: DirectiveState,
    /// 1-based number of the last line read.
    line_no: usize,
}

impl<'a, I: Iterator<Item = &'a str>> Parser<'a, I> {
    fn next_line(&mut self) -> Option<&'a str> {
        let line = self.lines.next()?;
        self.line_no += 1;
        Some(line)
    }

    /// Strips the newline (and leading whitespace on an instruction's first line), feeds the
    /// directive parser, and blanks comment lines.
    fn process_line(&mut self, raw: &'a str, first_of_instruction: bool) -> Result<&'a str> {
        let mut token = trim_newline(raw);
        if first_of_instruction {
            token = token.trim_start();
        }
        self.directives
            .observe(token)
            .map_err(|e| e.or_at(Location::lines(self.line_no, self.line_no)))?;
        Ok(if token.starts_with('#') { "" } else { token })
    }

    /// Removes a trailing line-continuation escape; returns the line and whether the
    /// instruction ends here.
    fn trim_continuation(&self, line: &'a str) -> (&'a str, bool) {
        let escape = self.directives.found.escape;
        let body = line.trim_end_matches([' ', '\t']);
        let Some(before) = body.strip_suffix(escape) else {
            return (line, true);
        };
        // An escaped escape (`\\`) at the end is not a continuation.
        if before.ends_with(escape) {
            return (line, true);
        }
        (before, false)
    }

    fn run(mut self) -> Result<Document> {
        let mut nodes = Vec::new();
        let mut warnings = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        while let Some(raw) = self.next_line() {
            if is_comment(raw) {
                let comment = raw.trim_start().trim_start_matches('#').trim().to_string();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment);
                }
            }
            let processed = self.process_line(raw, true)?;
            let start_line = self.line_no;
            let (first, mut end_of_instruction) = self.trim_continuation(processed);
            if end_of_instruction && first.is_empty() {
                continue;
            }
            let mut line = first.to_string();
            let mut empty_continuation = false;
            while !end_of_instruction {
                let Some(raw) = self.next_line() else { break };
                let processed = self.process_line(raw, false)?;
                if is_comment(raw) {
                    continue;
                }
                if processed.trim_start().is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (part, end) = self.trim_continuation(processed);
                line.push_str(part);
                end_of_instruction = end;
            }
            if empty_continuation {
                warnings.push(format!("Empty continuation line found in: {line}"));
            }
            let escape = self.directives.found.escape;
            let mut node =
                line_parsers::node_from_line(&line, escape, std::mem::take(&mut comments))
                    .map_err(|e| e.or_at(Location::lines(start_line, self.line_no)))?;
            if line.contains("<<") && self.can_contain_heredoc(&node) {
                let docs = heredocs_from_line(&line)
                    .map_err(|e| e.or_at(Location::lines(start_line, self.line_no)))?;
                for mut doc in docs {
                    doc.content = self.read_heredoc_body(&doc, start_line)?;
                    node.heredocs.push(doc);
                }
            }
            node.start_line = start_line;
            node.end_line = self.line_no;
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err(Error::at(
                "file with no instructions",
                Location::lines(self.line_no.max(1), self.line_no.max(1)),
            ));
        }
        Ok(Document {
            directives: self.directives.found,
            nodes,
            warnings,
        })
    }

    /// RUN, COPY and ADD in shell form, also when wrapped in ONBUILD.
    fn can_contain_heredoc(&self, node: &Node) -> bool {
        let inner = match (&node.keyword[..], &node.nested) {
            ("onbuild", Some(nested)) => nested.as_ref(),
            _ => node,
        };
        heredoc::keyword_takes_heredocs(&inner.keyword) && !inner.json
    }

    /// Reads body lines up to the terminator line (tabs stripped first for `<<-`).
    fn read_heredoc_body(&mut self, doc: &Heredoc, start_line: usize) -> Result<String> {
        let mut content = String::new();
        while let Some(raw) = self.next_line() {
            let mut candidate = trim_newline(raw);
            if doc.chomp {
                candidate = candidate.trim_start_matches('\t');
            }
            if candidate == doc.name {
                return Ok(content);
            }
            content.push_str(raw);
        }
        Err(Error::at(
            format!(
                "unterminated heredoc {:?}: no line reads {:?}",
                doc.name, doc.name
            ),
            Location::lines(start_line, self.line_no),
        ))
    }
}
