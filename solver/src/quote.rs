//! Go's `strconv.Quote`, which BuildKit's messages and dumps use (`%q`) to name words,
//! flags and processes.

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

#[cfg(test)]
mod tests {
    use super::go_quote;

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
