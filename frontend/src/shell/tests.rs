//! Unit tests of the lexer's options and of BuildKit behaviours the tables do not cover.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

fn env() -> BTreeMap<String, String> {
    [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("NULL", ""),
        ("SP", "a  b"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn word(lex: &Lexer, input: &str) -> String {
    lex.process_word(input, &env())
        .unwrap_or_else(|e| panic!("{input:?}: {e}"))
}

fn words(lex: &Lexer, input: &str) -> Vec<String> {
    lex.process_words(input, &env())
        .unwrap_or_else(|e| panic!("{input:?}: {e}"))
}

fn err(lex: &Lexer, input: &str) -> String {
    match lex.process_word(input, &env()) {
        Ok(out) => panic!("{input:?} should fail, gave {out:?}"),
        Err(e) => e.message,
    }
}

#[test]
fn env_impls() {
    let pairs = vec![
        ("A".to_string(), "1".to_string()),
        ("A".to_string(), "2".to_string()),
    ];
    let lex = Lexer::new('\\');
    assert_eq!(lex.process_word("$A", &pairs).unwrap(), "2");
    assert_eq!(lex.process_word("$A", pairs.as_slice()).unwrap(), "2");
    let map: HashMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(lex.process_word("${A}", &map).unwrap(), "2");
    let dynamic: &dyn ShellEnv = &map;
    assert_eq!(lex.process_word("x$A", dynamic).unwrap(), "x2");
    // Names are case-sensitive (BuildKit on Unix).
    assert_eq!(lex.process_word("[$a]", &map).unwrap(), "[]");
}

#[test]
fn defaults() {
    let lex = Lexer::new('\\');
    assert_eq!(
        word(&lex, r#"a\ "b c" 'd$PWD' "$PWD""#),
        "a b c d$PWD /home"
    );
    assert_eq!(
        words(&lex, r#"a\ "b c" 'd$PWD' "$PWD""#),
        ["a b c", "d$PWD", "/home"]
    );
    assert_eq!(words(&lex, "x${SP}y"), ["xa", "by"]);
    assert_eq!(words(&lex, "x\"${SP}\"y"), ["xa  by"]);
    assert_eq!(words(&lex, "  \"\"  ''  "), Vec::<String>::new());
}

#[test]
fn raw_quotes() {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    assert_eq!(word(&lex, r#"he'll'o "x$PWD""#), r#"he'll'o "x/home""#);
    assert_eq!(words(&lex, r#"'a b' "c d""#), ["'a b'", "\"c d\""]);
    // Escapes are still processed.
    assert_eq!(word(&lex, r#"\"a\" "\$""#), r#""a" "$""#);
}

#[test]
fn raw_escapes() {
    let mut lex = Lexer::new('\\');
    lex.raw_escapes = true;
    assert_eq!(word(&lex, r"a\ b\$PWD"), r"a\ b\$PWD");
    assert_eq!(words(&lex, r"a\ b c"), [r"a\ b", "c"]);
    // Inside double quotes an escape that escapes nothing shows up twice (BuildKit quirk).
    assert_eq!(word(&lex, r#""\a\"""#), r#"\\a\""#);
    // A trailing escape is kept, then the word ends.
    assert_eq!(word(&lex, r"ab\"), r"ab\");
    // The word of `${V:-…}` is processed with raw escapes off.
    assert_eq!(word(&lex, r"${X:-a\ b}"), "a b");
}

#[test]
fn skip_unset_env() {
    let mut lex = Lexer::new('\\');
    lex.skip_unset_env = true;
    assert_eq!(word(&lex, "$PWD $FOO ${BAR}"), "/home $FOO ${BAR}");
    assert_eq!(word(&lex, "${FOO:-$BAR} ${FOO-x}"), "${FOO:-$BAR} ${FOO-x}");
    assert_eq!(
        word(&lex, "${FOO:?must} ${FOO#*a}"),
        "${FOO:?must} ${FOO#*a}"
    );
    // The doubled slash of `${V//p/r}` is not written back.
    assert_eq!(word(&lex, "${FOO//a/b}"), "${FOO/a/b}");
    assert_eq!(word(&lex, "${PWD:+set} ${NULL:-empty}"), "set empty");
    // Still an error when the syntax is wrong.
    assert!(lex.process_word("${FOO", &env()).is_err());
}

#[test]
fn skip_process_quotes() {
    let mut lex = Lexer::new('\\');
    lex.skip_process_quotes = true;
    assert_eq!(word(&lex, r#"'$PWD' "a b""#), r#"'/home' "a b""#);
    assert_eq!(words(&lex, r#"'a b' "c""#), ["'a", "b'", "\"c\""]);
    // Unbalanced quotes are no error.
    assert_eq!(word(&lex, "it's"), "it's");
    assert_eq!(word(&lex, r#"\'"#), "'");
}

#[test]
fn backtick_escape() {
    let lex = Lexer::new('`');
    assert_eq!(word(&lex, r"C:\path\$PWD"), r"C:\path\/home");
    assert_eq!(word(&lex, "a` b`$PWD"), "a b$PWD");
    assert_eq!(words(&lex, "a` b c"), ["a b", "c"]);
    assert_eq!(word(&lex, r#""x`"y`$PWD\n""#), r#"x"y$PWD\n"#);
    assert_eq!(word(&lex, "end`"), "end");
    // Patterns always use `\` as their own escape.
    let mut e = env();
    e.insert("F".into(), "a*b".into());
    assert_eq!(lex.process_word(r"${F#a\*}", &e).unwrap(), "b");
}

#[test]
fn error_messages() {
    let lex = Lexer::new('\\');
    assert_eq!(
        err(&lex, "he${PWD"),
        "failed to process \"he${PWD\": unsupported modifier (\u{FFFD}) in substitution"
    );
    assert_eq!(
        err(&lex, "${"),
        "failed to process \"${\": syntax error: missing '}'"
    );
    assert_eq!(
        err(&lex, "${}"),
        "failed to process \"${}\": syntax error: bad substitution"
    );
    assert_eq!(
        err(&lex, "${X:-a"),
        "failed to process \"${X:-a\": syntax error: missing '}'"
    );
    assert_eq!(
        err(&lex, "${X//a}"),
        "failed to process \"${X//a}\": syntax error: missing '/' in ${}"
    );
    assert_eq!(
        err(&lex, "'a"),
        "failed to process \"'a\": unexpected end of statement while looking for matching single-quote"
    );
    assert_eq!(
        err(&lex, "\"a"),
        "failed to process \"\\\"a\": unexpected end of statement while looking for matching double-quote"
    );
    assert_eq!(
        err(&lex, "${X:?}"),
        "failed to process \"${X:?}\": X: is not allowed to be unset"
    );
    assert_eq!(
        err(&lex, "${NULL:?}"),
        "failed to process \"${NULL:?}\": NULL: is not allowed to be empty"
    );
    assert_eq!(
        err(&lex, "${X:#a}"),
        "failed to process \"${X:#a}\": unsupported modifier (:#) in substitution"
    );
    assert_eq!(
        err(&lex, "${PWD#a\\b}"),
        "failed to process \"${PWD#a\\\\b}\": invalid pattern (a\\b) in substitution: invalid escape '\\b'"
    );
    // The `%` forms reverse the pattern before compiling it, and the message shows that.
    assert_eq!(
        err(&lex, "${PWD%a\\bc}"),
        "failed to process \"${PWD%a\\\\bc}\": invalid pattern (c\\ba) in substitution: invalid escape '\\b'"
    );
    // Go's %q for the word.
    assert_eq!(
        err(&lex, "\t\u{7f}\u{a0}é\u{1F600}\u{E0001}${"),
        "failed to process \"\\t\\x7f\\u00a0é\u{1F600}\\U000e0001${\": syntax error: missing '}'"
    );
}

#[test]
fn buildkit_quirks() {
    let lex = Lexer::new('\\');
    // A byte order mark at the very start is skipped by Go's text/scanner.
    assert_eq!(word(&lex, "\u{FEFF}a\u{FEFF}"), "a\u{FEFF}");
    // Unicode letters and digits belong to names.
    let mut e = env();
    e.insert("ÉTÉ٣".into(), "summer".into());
    assert_eq!(lex.process_word("$ÉTÉ٣!", &e).unwrap(), "summer!");
    // `##`/`%%` are recognised after expansion of the word.
    e.insert("H".into(), "#*/".into());
    e.insert("P".into(), "a/b/c".into());
    assert_eq!(lex.process_word("${P#$H}", &e).unwrap(), "c");
    // `${V/p/r}` inserts r as is, `${V//p/r}` reads it as a Go regexp template.
    e.insert("R".into(), "<$0>".into());
    assert_eq!(lex.process_word("${P/b/$R}", &e).unwrap(), "a/<$0>/c");
    assert_eq!(lex.process_word("${P//b/$R}", &e).unwrap(), "a/<b>/c");
    // A nested `${V<op>…}` empties the word being split: text before it on the same word is
    // lost from `process_words` (but not from `process_word`).
    assert_eq!(word(&lex, "pre${X:-mid}post"), "premidpost");
    assert_eq!(words(&lex, "a pre${X:-mid}post"), ["a", "midpost"]);
    assert_eq!(words(&lex, "pre${PWD}post"), ["pre/homepost"]);
}

#[test]
fn matches() {
    let lex = Lexer::new('\\');
    let out = lex
        .process_word_with_matches("$PWD ${NOPE:-x} ${NULL+y} $1", &env())
        .unwrap();
    assert_eq!(out.result, "/home x y ");
    assert_eq!(out.matched.into_iter().collect::<Vec<_>>(), ["NULL", "PWD"]);
    assert_eq!(out.unmatched.into_iter().collect::<Vec<_>>(), ["1", "NOPE"]);
}

fn shellish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "*", "\\", "`", "'", "\"", " ",
            "\n", "A", "PWD", "NULL", "SP", "0", "@", "é", "\u{FEFF}", "\t",
        ])
        .prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

#[test]
fn heredoc_operator_keeps_following_space_in_the_word() {
    let lex = Lexer::new('\\');
    assert_eq!(words(&lex, "cat <<  EOF x"), vec!["cat", "<<  EOF", "x"]);
    assert_eq!(words(&lex, "a < b <<-E"), vec!["a", "<", "b", "<<-E"]);
    assert_eq!(word(&lex, "x << y"), "x << y");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics(
        input in prop_oneof![any::<String>(), shellish()],
        escape in prop::sample::select(vec!['\\', '`', '$', '"', 'a']),
        raw_quotes in any::<bool>(),
        raw_escapes in any::<bool>(),
        skip_process_quotes in any::<bool>(),
        skip_unset_env in any::<bool>(),
    ) {
        let lex = Lexer { escape, raw_quotes, raw_escapes, skip_process_quotes, skip_unset_env };
        let env = env();
        let one = lex.process_word(&input, &env);
        let many = lex.process_words(&input, &env);
        let with = lex.process_word_with_matches(&input, &env);
        prop_assert_eq!(one.is_ok(), many.is_ok());
        match (one, with) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b.result),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "disagree: {:?} vs {:?}", a, b),
        }
    }
}
