//! Splitting one logical instruction line into keyword, flags and arguments, the way each of
//! BuildKit's per-instruction line parsers does.

use super::ast::Node;
use crate::error::{Error, Result};

/// `[\t\v\f\r ]`, BuildKit's `reWhitespace` class (note: no newline).
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Go's `regexp.MustCompile("[\t\v\f\r ]+").Split(s, n)` (n < 0: no limit).
pub(super) fn split_whitespace_runs(s: &str, n: isize) -> Vec<&str> {
    if n == 0 {
        return Vec::new();
    }
    if s.is_empty() {
        return vec![""];
    }
    let mut parts = Vec::new();
    let mut beg = 0;
    let mut end = 0;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if !is_split_space(c) {
            continue;
        }
        if n > 0 && parts.len() as isize == n - 1 {
            break;
        }
        let mut run_end = i + c.len_utf8();
        while let Some(&(j, d)) = iter.peek() {
            if !is_split_space(d) {
                break;
            }
            run_end = j + d.len_utf8();
            iter.next();
        }
        end = i;
        parts.push(&s[beg..end]);
        beg = run_end;
    }
    if end != s.len() {
        parts.push(&s[beg..]);
    }
    parts
}

/// Splits a logical line into the lower-cased keyword, the leading `--flags`, and the rest.
pub(super) fn split_command(line: &str) -> (String, Vec<String>, String) {
    let trimmed = line.trim();
    let parts = split_whitespace_runs(trimmed, 2);
    let keyword = parts[0].to_lowercase();
    let (rest, flags) = match parts.get(1) {
        Some(rest) => extract_builder_flags(rest),
        None => (String::new(), Vec::new()),
    };
    (keyword, flags, rest.trim().to_string())
}

/// Takes the leading words that start with `--` as flags (quotes removed, `\` escapes the next
/// character); a bare `--` ends the flags. Returns the rest of the line and the flags.
fn extract_builder_flags(line: &str) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut phase = Phase::Spaces;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos < chars.len() {
        let (offset, ch) = chars[pos];
        match phase {
            Phase::Spaces => {
                if ch.is_whitespace() {
                    pos += 1;
                    continue;
                }
                let next_is_dash = chars.get(pos + 1).is_some_and(|&(_, c)| c == '-');
                if ch != '-' || !next_is_dash {
                    return (line[offset..].to_string(), words);
                }
                phase = Phase::Word;
                continue;
            }
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (line[offset..].to_string(), words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                } else if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                } else if ch == '\\' {
                    if let Some(&(_, next)) = chars.get(pos + 1) {
                        word.push(next);
                        pos += 1;
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                } else if ch == '\\' {
                    match chars.get(pos + 1) {
                        Some(&(_, next)) => {
                            word.push(next);
                            pos += 1;
                        }
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(ch);
                }
            }
        }
        pos += 1;
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    (String::new(), words)
}

/// Splits on whitespace, keeping quotes and escapes in the words (they are removed later, at
/// expansion). Used by ENV, LABEL and ARG.
pub(super) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut phase = Phase::Spaces;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        let at_last = pos + 1 == chars.len();
        match phase {
            Phase::Spaces => {
                if !ch.is_whitespace() {
                    phase = Phase::Word;
                    continue;
                }
            }
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                } else {
                    if ch == '\'' || ch == '"' {
                        phase = Phase::Quote(ch);
                        blank_ok = true;
                    }
                    if ch == escape {
                        if !at_last {
                            // An unquoted escape keeps itself and the next character.
                            word.push(ch);
                            pos += 1;
                            word.push(chars[pos]);
                        }
                    } else {
                        word.push(ch);
                    }
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                }
                if ch == escape && q != '\'' {
                    if at_last {
                        phase = Phase::Word;
                    } else {
                        word.push(ch);
                        pos += 1;
                        word.push(chars[pos]);
                    }
                } else {
                    word.push(ch);
                }
            }
        }
        pos += 1;
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// Arguments of ENV and LABEL: `k=v` words give `k v =` triples; the legacy `KEY k v w` form
/// gives `k "v w" ""`.
fn parse_name_val(rest: &str, keyword: &str, escape: char) -> Result<Vec<String>> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Vec::new());
    }
    if !words[0].contains('=') {
        let parts = split_whitespace_runs(rest, 2);
        if parts.len() < 2 {
            return Err(Error::new(format!("{keyword} must have two arguments")));
        }
        return Ok(vec![
            parts[0].to_string(),
            parts[1].to_string(),
            String::new(),
        ]);
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(Error::new(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                super::go_quote(&word)
            )));
        };
        args.extend([key.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(args)
}

/// The outcome of trying the JSON (exec) form.
enum JsonForm {
    /// A JSON array of strings.
    Strings(Vec<String>),
    /// Not a JSON array: use the shell form.
    NotJson,
}

/// BuildKit's `parseJSON`: an array of strings, an error for an array holding anything else,
/// otherwise not JSON.
fn parse_json(rest: &str) -> Result<JsonForm> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(JsonForm::NotJson);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(JsonForm::NotJson);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(Error::new(
                "when using JSON array syntax, arrays must be comprised of strings only",
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(JsonForm::Strings)
}

/// Arguments of RUN, CMD, ENTRYPOINT and SHELL: JSON form, else the rest verbatim.
fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool)> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match parse_json(rest)? {
        JsonForm::Strings(args) => (args, true),
        JsonForm::NotJson => (vec![rest.to_string()], false),
    })
}

/// Splits on whitespace runs; nothing for an empty rest.
fn whitespace_list(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_whitespace_runs(rest, -1)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// Builds the node for one logical line (keyword, flags, arguments); lines and heredocs are
/// filled in by the caller.
pub(super) fn node_from_line(line: &str, escape: char, comments: Vec<String>) -> Result<Node> {
    let (keyword, flags, rest) = split_command(line);
    let mut node = Node {
        keyword,
        flags,
        args: Vec::new(),
        nested: None,
        json: false,
        original: line.to_string(),
        heredocs: Vec::new(),
        start_line: 0,
        end_line: 0,
        comments,
    };
    match node.keyword.as_str() {
        "add" | "copy" | "volume" => match parse_json(&rest)? {
            JsonForm::Strings(args) => {
                node.args = args;
                node.json = true;
            }
            JsonForm::NotJson => node.args = whitespace_list(&rest),
        },
        "run" | "cmd" | "entrypoint" | "shell" => {
            (node.args, node.json) = parse_maybe_json(&rest)?;
        }
        "from" | "expose" => node.args = whitespace_list(&rest),
        "env" => node.args = parse_name_val(&rest, "ENV", escape)?,
        "label" => node.args = parse_name_val(&rest, "LABEL", escape)?,
        "arg" => node.args = parse_words(&rest, escape),
        "maintainer" | "user" | "workdir" | "stopsignal" => {
            if !rest.is_empty() {
                node.args = vec![rest];
            }
        }
        "healthcheck" => {
            let (kind, command) = rest.split_once(char::is_whitespace).unwrap_or((&rest, ""));
            if !kind.is_empty() {
                let (args, json) = parse_maybe_json(command.trim_start())?;
                node.args = std::iter::once(kind.to_string()).chain(args).collect();
                node.json = json;
            }
        }
        "onbuild" => {
            let trigger = rest.split_whitespace().next().unwrap_or("");
            if trigger.eq_ignore_ascii_case("onbuild") {
                // BuildKit refuses it too; refusing here also bounds the recursion.
                return Err(Error::new(
                    "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                ));
            }
            if !rest.is_empty() {
                node.nested = Some(Box::new(node_from_line(&rest, escape, Vec::new())?));
            }
        }
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_split_semantics() {
        assert_eq!(split_whitespace_runs("a  b\tc", -1), vec!["a", "b", "c"]);
        assert_eq!(split_whitespace_runs(" a", -1), vec!["", "a"]);
        assert_eq!(split_whitespace_runs("a ", -1), vec!["a", ""]);
        assert_eq!(split_whitespace_runs("a b c", 2), vec!["a", "b c"]);
        assert_eq!(split_whitespace_runs("", 2), vec![""]);
        assert_eq!(split_whitespace_runs("a\nb", -1), vec!["a\nb"]);
    }

    #[test]
    fn flags() {
        let (k, f, r) = split_command("COPY --from=\"a b\" --link -- --notflag x");
        assert_eq!((k.as_str(), r.as_str()), ("copy", "--notflag x"));
        assert_eq!(f, vec!["--from=a b", "--link"]);
        let (_, f, r) = split_command("RUN --x='' echo");
        assert_eq!((f, r.as_str()), (vec!["--x=".to_string()], "echo"));
        let (_, f, r) = split_command("CMD --doit");
        assert_eq!((f, r.as_str()), (vec!["--doit".to_string()], ""));
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            parse_words(r#"a="b c" d=e\ f g='h\'"#, '\\'),
            vec![r#"a="b c""#, r"d=e\ f", r"g='h\'"]
        );
        assert_eq!(parse_words("x\\", '\\'), vec!["x"]);
    }
}
