//! `.dockerignore`-style pattern lists: moby/patternmatcher's `PatternMatcher`.

use regex::Regex;

use crate::{PatternError, clean, glob_match};

/// An ordered list of patterns; later patterns override earlier ones, and a
/// `!pattern` re-includes what an earlier pattern excluded.
#[derive(Debug, Clone)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// One compiled pattern of a [`PatternMatcher`].
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

/// How a pattern is tested; literal shapes skip the regex.
#[derive(Debug, Clone)]
enum MatchKind {
    /// No wildcard: the path must equal the pattern.
    Exact,
    /// `dir/**`: any path that starts with `dir/`.
    Prefix(String),
    /// `**/x` or `**x`: any path that ends with the rest.
    Suffix(String),
    /// Everything else, as an anchored regex.
    Regex { go_source: String, regex: Regex },
}

/// What each pattern answered for a directory, so that its children need
/// not test the parent prefixes again (see
/// [`PatternMatcher::matches_using_parent_results`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

impl PatternMatcher {
    /// Compiles `patterns` as Docker does: each is trimmed, empty ones are
    /// dropped, the rest `path.Clean`ed; a leading `!` makes an exception.
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut compiled = Vec::new();
        let mut exclusions = false;
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let mut cleaned = clean(trimmed);
            let exclusion = cleaned.starts_with('!');
            if exclusion {
                if cleaned.len() == 1 {
                    return Err(PatternError::IllegalExclusion);
                }
                cleaned.remove(0);
                exclusions = true;
            }
            // Go's filepath.Match is the syntax check Docker applies.
            glob_match(&cleaned, ".")?;
            let kind = MatchKind::compile(&cleaned)?;
            compiled.push(Pattern {
                cleaned,
                exclusion,
                kind,
            });
        }
        Ok(Self {
            patterns: compiled,
            exclusions,
        })
    }

    /// Whether any pattern is a `!` exception (then a walker may not skip an
    /// excluded directory wholesale: something inside may be re-included).
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether `path` is matched by the list: by itself or through one of its
    /// parent directories (`a` matches `a/b/c`).
    pub fn matches_or_parent_matches(&self, path: &str) -> bool {
        let parent = parent_dir(path);
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let hit = pattern.matches(path)
                || (parent != "." && prefixes(&parent).any(|dir| pattern.matches(dir)));
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Like [`matches_or_parent_matches`](Self::matches_or_parent_matches),
    /// for a walker that visits directories before their contents: pass the
    /// [`MatchInfo`] returned for the parent directory (or the default for a
    /// top-level path) and keep the returned one for this path's children.
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> (bool, MatchInfo) {
        let known =
            (parent.parent_matched.len() == self.patterns.len()).then_some(&parent.parent_matched);
        let mut matched = false;
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = known.is_some_and(|m| m[i]);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path);
                if !hit && known.is_none() {
                    let parent = parent_dir(path);
                    hit = parent != "." && prefixes(&parent).any(|dir| pattern.matches(dir));
                }
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }
}

impl Pattern {
    /// The pattern after trimming, cleaning and removing a leading `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// The regular expression (in Go syntax, as patternmatcher builds it),
    /// or `None` when the pattern takes a literal fast path.
    pub fn regex_source(&self) -> Option<&str> {
        match &self.kind {
            MatchKind::Regex { go_source, .. } => Some(go_source),
            _ => None,
        }
    }

    /// patternmatcher's name for how this pattern is matched
    /// (`exactMatch`, `prefixMatch`, `suffixMatch` or `regexpMatch`).
    pub fn match_type(&self) -> &'static str {
        match self.kind {
            MatchKind::Exact => "exactMatch",
            MatchKind::Prefix(_) => "prefixMatch",
            MatchKind::Suffix(_) => "suffixMatch",
            MatchKind::Regex { .. } => "regexpMatch",
        }
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| s == path)
            }
            MatchKind::Regex { regex, .. } => regex.is_match(path),
        }
    }
}

impl MatchKind {
    /// patternmatcher's `compile`: `**` spans directories, `*` and `?` stay
    /// within one, `\` escapes, `[...]` is a class; literal shapes are
    /// recognised so that most patterns need no regex.
    fn compile(pattern: &str) -> Result<Self, PatternError> {
        #[derive(PartialEq)]
        enum Shape {
            Exact,
            Prefix,
            Suffix,
            Regex,
        }
        let mut shape = Shape::Exact;
        let mut re = String::from("^");
        let mut chars = pattern.chars().peekable();
        let mut first = true;
        while let Some(ch) = chars.next() {
            match ch {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    // `**/` is treated as `**`.
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        if shape == Shape::Exact {
                            shape = Shape::Prefix;
                        } else {
                            re.push_str(".*");
                            shape = Shape::Regex;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        shape = Shape::Regex;
                    }
                    if first {
                        shape = Shape::Suffix;
                    }
                }
                '*' => {
                    re.push_str("[^/]*");
                    shape = Shape::Regex;
                }
                '?' => {
                    re.push_str("[^/]");
                    shape = Shape::Regex;
                }
                '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                    re.push('\\');
                    re.push(ch);
                }
                '\\' => match chars.next() {
                    Some(next) => {
                        re.push('\\');
                        re.push(next);
                        shape = Shape::Regex;
                    }
                    None => re.push('\\'),
                },
                '[' | ']' => {
                    re.push(ch);
                    shape = Shape::Regex;
                }
                _ => re.push(ch),
            }
            first = false;
        }
        Ok(match shape {
            Shape::Exact => MatchKind::Exact,
            Shape::Prefix => MatchKind::Prefix(pattern[..pattern.len() - 2].to_string()),
            Shape::Suffix => MatchKind::Suffix(pattern[2..].to_string()),
            Shape::Regex => {
                re.push('$');
                let regex = Regex::new(&go_regex_to_rust(&re))
                    .map_err(|_| PatternError::BadPattern(pattern.to_string()))?;
                MatchKind::Regex {
                    go_source: re,
                    regex,
                }
            }
        })
    }
}

/// Rewrites the few constructs where Go's regexp syntax and the `regex`
/// crate disagree: inside `[...]` the crate nests classes and has the set
/// operators `&&`, `--` and `~~`, and outside it `\<`/`\>` are word
/// boundaries; Go reads all of these as literal characters.
fn go_regex_to_rust(go: &str) -> String {
    let mut out = String::with_capacity(go.len() + 8);
    let mut chars = go.chars().peekable();
    let mut in_class = false;
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some(c @ ('<' | '>')) => out.push(c),
                Some(c) => {
                    out.push('\\');
                    out.push(c);
                }
                None => out.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                // A `]` right after the opening bracket is a literal in Go.
                if chars.peek() == Some(&']') {
                    out.push_str("\\]");
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            ']' => out.push_str("\\]"),
            '[' if chars.peek() == Some(&':') => {
                // A POSIX class such as `[:alpha:]` means the same in both.
                out.push('[');
                for c in chars.by_ref() {
                    out.push(c);
                    if c == ']' {
                        break;
                    }
                }
            }
            '[' | '&' | '~' => {
                out.push('\\');
                out.push(ch);
            }
            '-' if in_class && chars.peek() == Some(&'-') => {
                out.push_str("-\\-");
                chars.next();
            }
            _ => out.push(ch),
        }
    }
    out
}

/// Go's `filepath.Dir`: everything before the last `/`, cleaned; `.` when
/// there is no `/`.
fn parent_dir(path: &str) -> String {
    let end = path.rfind('/').map_or(0, |i| i + 1);
    clean(&path[..end])
}

/// The ancestors of a path given its parent directory: `a/b` gives `a` and
/// `a/b`.
fn prefixes(parent: &str) -> impl Iterator<Item = &str> {
    parent
        .match_indices('/')
        .map(|(i, _)| &parent[..i])
        .chain(std::iter::once(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_include_the_leading_empty_component_of_absolute_paths() {
        assert_eq!(prefixes("a/b").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(
            prefixes("/any/path").collect::<Vec<_>>(),
            ["", "/any", "/any/path"]
        );
        assert_eq!(parent_dir("file/"), "file");
        assert_eq!(parent_dir("file"), ".");
    }

    #[test]
    fn rust_only_class_syntax_is_literal() {
        let m = |p: &str, path: &str| {
            PatternMatcher::new([p])
                .unwrap()
                .matches_or_parent_matches(path)
        };
        assert!(m("[a&&b]", "&"));
        assert!(m("[a~~b]", "~"));
        assert!(m("x[[]y", "x[y"));
        assert!(m("[[:alpha:]]", "q"));
        assert!(!m("[[:alpha:]]", "1"));
        assert!(m("a]b", "a]b"));
    }
}
