//! Docker's path-pattern semantics, ported from moby/patternmatcher.
//!
//! * [`PatternMatcher`] decides whether a context path is excluded by a
//!   `.dockerignore` (or selected by `COPY --exclude` / `--parents` patterns),
//!   with `**`, `!` exceptions and parent-directory matching exactly as Docker
//!   and BuildKit do.
//! * [`read_ignore_file`] turns `.dockerignore` text into a pattern list.
//! * [`glob_match`] is Go's `filepath.Match`, which COPY uses for wildcards
//!   in a single path component.
//! * [`clean`] is Go's `path.Clean`, which both apply to patterns first.
//!
//! Paths are slash-separated and relative to the context root.

mod clean;
mod glob;
mod ignorefile;
mod matcher;

pub use clean::clean;
pub use glob::{glob_match, has_wildcards};
pub use ignorefile::read_ignore_file;
pub use matcher::{MatchInfo, Pattern, PatternMatcher};

/// A pattern that Docker would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is malformed (Go's `filepath.ErrBadPattern`).
    #[error("syntax error in pattern: {0:?}")]
    BadPattern(String),
    /// A lone `!` exception with nothing to re-include.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
}
