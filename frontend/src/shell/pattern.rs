//! The shell patterns of `${VAR#pat}`, `${VAR%pat}` and `${VAR/pat/repl}`.
//!
//! BuildKit turns such a pattern into a Go regular expression (`*` → `.*` or `.*?`, `?` → `.`,
//! everything else literal; no bracket expressions) and lets Go's `regexp` find the match.
//! These patterns need only a tiny engine, so it is done here directly, with the same
//! semantics: leftmost-first matching (as a backtracking engine would choose), `.` never
//! matching a newline, and `ReplaceAllString`'s treatment of empty matches and of `$`
//! templates in the replacement.

use super::{is_digit, is_letter};

/// One element of a compiled pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Atom {
    /// This character.
    Lit(char),
    /// Any character but `\n` (`?`).
    Any,
    /// Any run of characters without `\n` (`*`).
    Star,
}

/// A compiled shell pattern.
#[derive(Debug)]
struct Pattern {
    atoms: Vec<Atom>,
    /// `*` prefers the longest run (else the shortest).
    greedy: bool,
}

impl Pattern {
    /// Compiles a shell pattern. `\` escapes `*`, `?` and `\`; before `}` or `/` it is
    /// dropped; before anything else (or at the end) it is an error.
    fn compile(pattern: &str, greedy: bool) -> Result<Pattern, String> {
        let chars: Vec<char> = pattern.chars().collect();
        // BuildKit reads the pattern with Go's text/scanner, which skips a leading BOM.
        let mut i = usize::from(chars.first() == Some(&'\u{FEFF}'));
        let mut atoms = Vec::with_capacity(chars.len());
        while let Some(&tok) = chars.get(i) {
            i += 1;
            match tok {
                '*' => atoms.push(Atom::Star),
                '?' => atoms.push(Atom::Any),
                '\\' => {
                    let next = chars.get(i).copied();
                    if matches!(next, Some('}' | '/')) {
                        continue;
                    }
                    if next.is_some() {
                        i += 1;
                    }
                    match next {
                        Some(c @ ('*' | '?' | '\\')) => atoms.push(Atom::Lit(c)),
                        other => {
                            return Err(format!(
                                "invalid escape '\\{}'",
                                other.unwrap_or('\u{FFFD}')
                            ));
                        }
                    }
                }
                c => atoms.push(Atom::Lit(c)),
            }
        }
        Ok(Pattern { atoms, greedy })
    }

    /// For every start position `p` in `text` (0..=len), the end of the match that a
    /// backtracking engine would pick when the match must start at `p`, or `None`.
    ///
    /// Computed from the last atom to the first: the preferred continuation from a position
    /// does not depend on how that position was reached, so one row per atom suffices.
    fn match_ends(&self, text: &[char]) -> Vec<Option<usize>> {
        let n = text.len();
        let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
        for atom in self.atoms.iter().rev() {
            let mut cur = vec![None; n + 1];
            match *atom {
                Atom::Lit(c) => {
                    for p in 0..n {
                        if text[p] == c {
                            cur[p] = next[p + 1];
                        }
                    }
                }
                Atom::Any => {
                    for p in 0..n {
                        if text[p] != '\n' {
                            cur[p] = next[p + 1];
                        }
                    }
                }
                Atom::Star => {
                    // From p the star may stop at any q in p..=(first '\n' at or after p).
                    // Greedy takes the largest such q whose continuation matches, lazy the
                    // smallest; scanning right to left keeps that q in `pick`.
                    let mut pick: Option<usize> = None;
                    for p in (0..=n).rev() {
                        if p < n && text[p] == '\n' {
                            pick = None;
                        }
                        if next[p].is_some() && (!self.greedy || pick.is_none()) {
                            pick = Some(p);
                        }
                        cur[p] = pick.and_then(|q| next[q]);
                    }
                }
            }
            next = cur;
        }
        next
    }
}

/// Removes the prefix of `value` that `pattern` matches (shortest, or longest if `greedy`).
pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let compiled = Pattern::compile(pattern, greedy)
        .map_err(|err| format!("invalid pattern ({pattern}) in substitution: {err}"))?;
    let text: Vec<char> = value.chars().collect();
    let ends = compiled.match_ends(&text);
    Ok(match ends[0] {
        Some(end) => text[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// Removes the suffix of `value` that `pattern` matches, by reversing both and trimming a
/// prefix (as BuildKit does; an error then quotes the reversed pattern).
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let reversed_pattern = reverse_pattern(pattern);
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reversed_pattern, &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern but keeps each `\x` pair in order (`a\*c` → `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let last = chars.len().saturating_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let tok = chars[i];
        let at = last - i;
        if tok == '\\' && i != last {
            out[at - 1] = tok;
            out[at] = chars[i + 1];
            i += 2;
        } else {
            out[at] = tok;
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// `${VAR/pat/repl}` (first match, `repl` inserted as is) and `${VAR//pat/repl}` (every
/// match, `repl` read as a Go regexp template: `$0` is the match, `$$` a dollar).
pub(super) fn replace(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
) -> Result<String, String> {
    let compiled = Pattern::compile(pattern, true)
        .map_err(|err| format!("invalid pattern ({pattern}) in substitution: {err}"))?;
    let text: Vec<char> = value.chars().collect();
    let ends = compiled.match_ends(&text);
    let n = text.len();
    let find_from = |from: usize| (from..=n).find_map(|s| ends[s].map(|e| (s, e)));

    if !all {
        return Ok(match find_from(0) {
            Some((start, end)) => {
                let mut out: String = text[..start].iter().collect();
                out.push_str(replacement);
                out.extend(&text[end..]);
                out
            }
            None => value.to_string(),
        });
    }

    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= n {
        let Some((start, end)) = find_from(search) else {
            break;
        };
        out.extend(&text[last_end..start]);
        // An empty match right after the previous match is not replaced.
        if end > last_end || start == 0 {
            let matched: String = text[start..end].iter().collect();
            expand_template(&mut out, replacement, &matched);
        }
        last_end = end;
        // Always move on by at least one character.
        search = if search + 1 > end { search + 1 } else { end };
    }
    out.extend(&text[last_end.min(n)..]);
    Ok(out)
}

/// Go's `Regexp.Expand` for a regexp without groups: `$$` is `$`; `$name` / `${name}` (name:
/// letters, digits, `_`) is the match for `0` and empty otherwise; any other `$` is kept.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match extract_name(rest) {
            Some((name, after)) => {
                rest = after;
                if name == "0" {
                    out.push_str(matched);
                }
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// The leading `name` or `{name}` of `s`, and what follows it.
fn extract_name(s: &str) -> Option<(&str, &str)> {
    let (brace, body) = match s.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let len = body
        .char_indices()
        .find(|&(_, c)| !(is_letter(c) || is_digit(c) || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if len == 0 {
        return None;
    }
    let (name, after) = body.split_at(len);
    if brace {
        Some((name, after.strip_prefix('}')?))
    } else {
        Some((name, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(pattern: &str, greedy: bool) -> Pattern {
        Pattern::compile(pattern, greedy).expect("valid pattern")
    }

    #[test]
    fn compile_escapes() {
        assert_eq!(matcher("\\*", true).atoms, vec![Atom::Lit('*')]);
        assert_eq!(
            matcher("a\\}\\/", true).atoms,
            vec![Atom::Lit('a'), Atom::Lit('}'), Atom::Lit('/')]
        );
        assert_eq!(
            Pattern::compile("\\", true).unwrap_err(),
            "invalid escape '\\\u{FFFD}'"
        );
        assert_eq!(
            Pattern::compile("\\x", true).unwrap_err(),
            "invalid escape '\\x'"
        );
        assert!(Pattern::compile("\\\\\\", true).is_err());
    }

    #[test]
    fn reverse_keeps_escape_pairs() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("👽\\🚀🖖"), "🖖\\🚀👽");
        assert_eq!(reverse_pattern("\\\\b"), "b\\\\");
        assert_eq!(reverse_pattern(""), "");
    }

    #[test]
    fn leftmost_first() {
        assert_eq!(trim_prefix("*x", "axbx", false).unwrap(), "bx");
        assert_eq!(trim_prefix("*x", "axbx", true).unwrap(), "");
        assert_eq!(trim_suffix("x*", "axbx", false).unwrap(), "axb");
        assert_eq!(trim_suffix("x*", "axbx", true).unwrap(), "a");
        // `*` and `?` do not cross a newline.
        assert_eq!(trim_prefix("*b", "a\nb", true).unwrap(), "a\nb");
        assert_eq!(trim_prefix("a?b", "a\nb", true).unwrap(), "a\nb");
        assert_eq!(trim_prefix("a*", "aa\nb", true).unwrap(), "\nb");
    }

    #[test]
    fn replace_all_like_go() {
        assert_eq!(replace("", "ab", "-", true).unwrap(), "-a-b-");
        assert_eq!(replace("", "ab", "-", false).unwrap(), "-ab");
        // A shell `*` is any run of characters, not a repetition of the atom before it.
        assert_eq!(replace("x*", "axxbx", "-", true).unwrap(), "a-");
        assert_eq!(replace("x*", "ax\nxb", "-", true).unwrap(), "a-\n-");
        assert_eq!(replace("x?", "axxbx", "-", true).unwrap(), "a-bx");
        assert_eq!(replace("o", "foo", "[$0]", true).unwrap(), "f[o][o]");
        assert_eq!(
            replace("o", "foo", "[${0}$$$1$x$]", true).unwrap(),
            "f[o$$][o$$]"
        );
        assert_eq!(replace("o", "foo", "[$0]", false).unwrap(), "f[$0]o");
        assert_eq!(replace("o", "foo", "${", true).unwrap(), "f${${");
    }
}
