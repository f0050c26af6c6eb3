//! Frontend errors that point at the Dockerfile: a message plus the line range it concerns,
//! rendered with a BuildKit-style snippet.

use std::fmt;

/// 1-based, inclusive line range in the Dockerfile, with an optional 1-based column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// First line.
    pub start_line: usize,
    /// Last line (equal to `start_line` for a one-line instruction).
    pub end_line: usize,
    /// Column of the offending character on `start_line`, when known.
    pub column: Option<usize>,
}

impl Location {
    /// A line range without a column.
    pub fn lines(start_line: usize, end_line: usize) -> Self {
        Location {
            start_line,
            end_line: end_line.max(start_line),
            column: None,
        }
    }
}

/// A frontend error: what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What is wrong, without location.
    pub message: String,
    /// Where, if the error concerns a particular place.
    pub location: Option<Location>,
    /// Whether the Dockerfile is at fault or something it names could not be reached.
    pub kind: ErrorKind,
}

/// What kind of frontend error it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorKind {
    /// The Dockerfile is wrong (a "dockerfile parse error").
    #[default]
    Dockerfile,
    /// A base image could not be resolved (a registry or DNS failure, a missing image):
    /// the Dockerfile may be fine.
    Resolve,
}

/// Result alias for the frontend.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with no location yet.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            location: None,
            kind: ErrorKind::Dockerfile,
        }
    }

    /// An error at `location`.
    pub fn at(message: impl Into<String>, location: Location) -> Self {
        Error {
            message: message.into(),
            location: Some(location),
            kind: ErrorKind::Dockerfile,
        }
    }

    /// A base image at `location` that could not be resolved, in BuildKit's words.
    pub fn unresolved(reference: &str, cause: impl fmt::Display, location: Location) -> Self {
        Error {
            message: format!(
                "failed to solve: {reference}: failed to resolve source metadata for {reference}: {cause}"
            ),
            location: Some(location),
            kind: ErrorKind::Resolve,
        }
    }

    /// Adds `location` unless the error already has one.
    pub fn or_at(mut self, location: Location) -> Self {
        self.location.get_or_insert(location);
        self
    }

    /// Renders the error the way BuildKit prints it: the file and line, the instruction lines
    /// marked with `>>>` and up to two lines of context before, then the message.
    pub fn render(&self, file_name: &str, source: &[u8]) -> String {
        let Some(loc) = self.location else {
            return format!("{file_name}: {}\n", self.message);
        };
        format!("{}ERROR: {self}\n", loc.snippet(file_name, source))
    }
}

impl Location {
    /// The lines of `source` at this location, BuildKit-style: `file:line`, then the lines
    /// marked with `>>>` after up to two lines of context, between dashed rules.
    pub fn snippet(&self, file_name: &str, source: &[u8]) -> String {
        let loc = *self;
        let text = String::from_utf8_lossy(source);
        let lines: Vec<&str> = text.split('\n').collect();
        let first = loc.start_line.saturating_sub(2).max(1);
        let last = loc.end_line.min(lines.len()).max(first);
        let width = last.to_string().len().max(3);
        let mut out = format!("{file_name}:{}", loc.start_line);
        if loc.end_line > loc.start_line {
            out.push_str(&format!("-{}", loc.end_line));
        }
        out.push_str("\n--------------------\n");
        for n in first..=last {
            let line = lines
                .get(n - 1)
                .copied()
                .unwrap_or("")
                .trim_end_matches('\r');
            let marker = if n >= loc.start_line && n <= loc.end_line {
                ">>>"
            } else {
                "   "
            };
            out.push_str(&format!(" {n:>width$} | {marker} {line}\n"));
            if n == loc.start_line
                && let Some(col) = loc.column
            {
                let pad = " ".repeat(width + 7 + col.saturating_sub(1));
                out.push_str(&format!("{pad}^\n"));
            }
        }
        out.push_str("--------------------\n");
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            _ if self.kind == ErrorKind::Resolve => f.write_str(&self.message),
            Some(loc) if loc.end_line > loc.start_line => write!(
                f,
                "dockerfile parse error on lines {}-{}: {}",
                loc.start_line, loc.end_line, self.message
            ),
            Some(loc) => write!(
                f,
                "dockerfile parse error on line {}: {}",
                loc.start_line, self.message
            ),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_snippet_with_marker_and_context() {
        let src = b"FROM busybox\n\nRUN echo hi\nFOO bar\nRUN true\n";
        let e = Error::at("unknown instruction: FOO", Location::lines(4, 4));
        let r = e.render("Dockerfile", src);
        assert_eq!(
            r,
            "Dockerfile:4\n--------------------\n   2 |     \n   3 |     RUN echo hi\n   4 | >>> FOO bar\n\
             --------------------\nERROR: dockerfile parse error on line 4: unknown instruction: FOO\n"
        );
    }

    #[test]
    fn column_gets_a_caret() {
        let e = Error {
            message: "bad".into(),
            location: Some(Location {
                start_line: 1,
                end_line: 1,
                column: Some(3),
            }),
            kind: ErrorKind::Dockerfile,
        };
        let r = e.render("Dockerfile", b"ab!d\n");
        assert!(r.contains("   1 | >>> ab!d\n            ^\n"), "{r}");
    }
}
