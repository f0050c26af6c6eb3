//! Go's `strconv` forms that BuildKit's messages and options use: `Quote` (`%q`), which
//! names words, flags and processes, and `ParseBool`, which reads boolean options.

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// Quotes `s` exactly as Go's `strconv.Quote` does for valid UTF-8.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_ascii() {
        return c.is_ascii_graphic();
    }
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter
            | GeneralCategoryGroup::Mark
            | GeneralCategoryGroup::Number
            | GeneralCategoryGroup::Punctuation
            | GeneralCategoryGroup::Symbol
    )
}

/// Go's `strconv.ParseBool`: `1`, `t`, `T`, `true`, `TRUE`, `True` and their false
/// counterparts; `None` for anything else.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{go_quote, parse_go_bool};

    #[test]
    fn reads_booleans_like_go() {
        for word in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_go_bool(word), Some(true), "{word}");
        }
        for word in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_go_bool(word), Some(false), "{word}");
        }
        for word in ["", "yes", "tRUE", " true"] {
            assert_eq!(parse_go_bool(word), None, "{word}");
        }
    }

    #[test]
    fn quotes_like_go() {
        assert_eq!(
            go_quote("\" \\ / \u{8} \u{c} \n \r \t \0"),
            r#""\" \\ / \b \f \n \r \t \x00""#
        );
        assert_eq!(go_quote("♥☃"), "\"♥☃\"");
        assert_eq!(go_quote("\u{7f}\u{a0}\u{200b}"), r#""\x7f\u00a0\u200b""#);
        assert_eq!(go_quote("\u{e0001}"), r#""\U000e0001""#);
    }

    #[test]
    fn names_processes_as_buildkit_messages_do() {
        assert_eq!(go_quote("echo hi"), "\"echo hi\"");
        assert_eq!(
            go_quote("echo \"$X\" \\\n\tdone\x1b\x07"),
            "\"echo \\\"$X\\\" \\\\\\n\\tdone\\x1b\\a\""
        );
        assert_eq!(go_quote("ünïcode"), "\"ünïcode\"");
    }
}
