//! The shell lexer: BuildKit's word processing for Dockerfile instructions.
//!
//! A [`Lexer`] takes one word (the text of an instruction argument) and an environment, and
//! processes quotes (`'…'`, `"…"`), the escape character (`\` or, after `# escape=`, `` ` ``)
//! and variable references (`$VAR`, `${VAR}`, `${VAR:-x}`, `${VAR#pat}`, `${VAR/pat/r}`, …).
//! It reproduces the behaviour of BuildKit's `frontend/dockerfile/shell` package, quirks and
//! error messages included, so that a Dockerfile expands the same way under kiln as under
//! BuildKit. The conformance tables in `shared/conformance/buildkit-shell/` pin it down.
//!
//! Three entry points share one engine:
//! * [`Lexer::process_word`]: one string, inner whitespace kept (`ENV`, `WORKDIR`, …);
//! * [`Lexer::process_words`]: the same expansion, then split on unquoted whitespace;
//! * [`Lexer::process_word_with_matches`]: like `process_word`, plus the names looked up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use kiln_solver::go_quote;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

mod pattern;
#[cfg(test)]
mod tests;

/// Lookup of variables for expansion.
pub trait ShellEnv {
    /// The value of `name`, or `None` when it is not set (an empty value is set).
    fn get(&self, name: &str) -> Option<&str>;
}

impl ShellEnv for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

impl<S: BuildHasher> ShellEnv for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl ShellEnv for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl ShellEnv for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        ShellEnv::get(self.as_slice(), name)
    }
}

impl<T: ShellEnv + ?Sized> ShellEnv for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// An error from the lexer. The message reads like BuildKit's, e.g.
/// `failed to process "${FOO": syntax error: missing '}'`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShellError {
    /// The full message, including BuildKit's `failed to process "<word>": ` prefix.
    pub message: String,
}

/// The result of [`Lexer::process_word_with_matches`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The processed word (as [`Lexer::process_word`] returns it).
    pub result: String,
    /// Names that were looked up and found in the environment.
    pub matched: BTreeSet<String>,
    /// Names that were looked up and not found.
    pub unmatched: BTreeSet<String>,
}

/// BuildKit's shell lexer (`shell.Lex`), with its options.
#[derive(Clone, Debug)]
pub struct Lexer {
    /// The escape character: `\` by default, `` ` `` after `# escape=``.
    pub escape: char,
    /// Keep the quote characters in the output (`RawQuotes`).
    pub raw_quotes: bool,
    /// Keep escape characters in the output (`RawEscapes`).
    pub raw_escapes: bool,
    /// Treat `'` and `"` as ordinary characters (`SkipProcessQuotes`).
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written (`SkipUnsetEnv`).
    pub skip_unset_env: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

/// What one run of the engine produces.
struct Processed {
    result: String,
    words: Vec<String>,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl Lexer {
    /// A lexer with the given escape character and all options off (BuildKit's `NewLex`).
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Processes quotes, escapes and variables in `word` and returns one string.
    pub fn process_word(
        &self,
        word: &str,
        env: &(impl ShellEnv + ?Sized),
    ) -> Result<String, ShellError> {
        self.process(word, env).map(|p| p.result)
    }

    /// Processes `word` like [`Lexer::process_word`], then splits it on unquoted whitespace
    /// (whitespace that came from an unquoted variable splits too; empty words are dropped).
    pub fn process_words(
        &self,
        word: &str,
        env: &(impl ShellEnv + ?Sized),
    ) -> Result<Vec<String>, ShellError> {
        self.process(word, env).map(|p| p.words)
    }

    /// Processes `word` like [`Lexer::process_word`] and also reports which variable names
    /// were looked up, split into those found and those not found.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &(impl ShellEnv + ?Sized),
    ) -> Result<Expansion, ShellError> {
        self.process(word, env).map(|p| Expansion {
            result: p.result,
            matched: p.matched,
            unmatched: p.unmatched,
        })
    }

    fn process<E: ShellEnv + ?Sized>(&self, word: &str, env: &E) -> Result<Processed, ShellError> {
        let mut state = WordState::new(self, env, word);
        match state.process_stop_on(None, self.raw_escapes) {
            Ok((result, words)) => Ok(Processed {
                result,
                words,
                matched: state.matched,
                unmatched: state.unmatched,
            }),
            Err(inner) => Err(ShellError {
                message: format!("failed to process {}: {inner}", go_quote(word)),
            }),
        }
    }
}

/// Split-into-words bookkeeping of one `process_stop_on` level. The buffer of the word being
/// built is not here: it lives in [`WordState`] and is shared by every level (see there).
#[derive(Default)]
struct Words {
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, buf: &mut String, ch: char) {
        if is_space(ch) && self.in_word {
            if !buf.is_empty() {
                self.words.push(std::mem::take(buf));
                self.in_word = false;
            }
        } else if !is_space(ch) {
            self.add_raw_char(buf, ch);
        }
    }

    fn add_raw_char(&mut self, buf: &mut String, ch: char) {
        buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, buf: &mut String, s: &str) {
        for ch in s.chars() {
            self.add_char(buf, ch);
        }
    }

    fn add_raw_string(&mut self, buf: &mut String, s: &str) {
        buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self, buf: &mut String) -> Vec<String> {
        if !buf.is_empty() {
            self.words.push(std::mem::take(buf));
            self.in_word = false;
        }
        self.words
    }
}

/// The state of one call: the input as characters, a cursor, and what was looked up.
struct WordState<'a, E: ShellEnv + ?Sized> {
    lex: &'a Lexer,
    env: &'a E,
    chars: Vec<char>,
    pos: usize,
    /// Whether escape characters are kept; nested `${…}` words change it for their extent.
    raw_escapes: bool,
    /// The word being built for `process_words`. BuildKit keeps a single buffer for all
    /// nesting levels and empties it whenever a nested word starts, so text gathered for the
    /// current word before a `${VAR<op>…}` is dropped from the split words (not from the
    /// joined result). Sharing it here reproduces that.
    words_buf: String,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

/// Go prints an invalid rune (such as the end of input, -1) as U+FFFD.
fn rune_str(ch: Option<char>) -> char {
    ch.unwrap_or('\u{FFFD}')
}

impl<'a, E: ShellEnv + ?Sized> WordState<'a, E> {
    fn new(lex: &'a Lexer, env: &'a E, word: &str) -> Self {
        let chars: Vec<char> = word.chars().collect();
        // Go's text/scanner skips a byte order mark at the very start of its input.
        let pos = usize::from(chars.first() == Some(&'\u{FEFF}'));
        WordState {
            lex,
            env,
            chars,
            pos,
            raw_escapes: lex.raw_escapes,
            words_buf: String::new(),
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn get_env(&mut self, name: &str) -> (String, bool) {
        match self.env.get(name) {
            Some(value) => {
                self.matched.insert(name.to_string());
                (value.to_string(), true)
            }
            None => {
                self.unmatched.insert(name.to_string());
                (String::new(), false)
            }
        }
    }

    /// Processes up to `stop` (consumed) or, with `None`, to the end of the input.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let out = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        self.words_buf.clear();
        let mut words = Words::default();
        let quotes = !self.lex.skip_process_quotes;

        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish(&mut self.words_buf)));
            }
            if ch == '$' || (quotes && (ch == '\'' || ch == '"')) {
                let tmp = match ch {
                    '$' => self.process_dollar()?,
                    '\'' => self.process_single_quote()?,
                    _ => self.process_double_quote()?,
                };
                result.push_str(&tmp);
                if ch == '$' {
                    words.add_string(&mut self.words_buf, &tmp);
                } else {
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                continue;
            }
            if ch == '<' {
                let tmp = self.process_possible_heredoc();
                result.push_str(&tmp);
                words.add_raw_string(&mut self.words_buf, &tmp);
                continue;
            }
            self.next();
            if ch == self.lex.escape {
                if self.raw_escapes {
                    words.add_raw_char(&mut self.words_buf, ch);
                    result.push(ch);
                }
                // The escape character escapes the next one; at the end it is dropped.
                let Some(escaped) = self.next() else {
                    break;
                };
                words.add_raw_char(&mut self.words_buf, escaped);
                result.push(escaped);
            } else {
                words.add_char(&mut self.words_buf, ch);
                result.push(ch);
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish(&mut self.words_buf)))
    }

    /// `'…'`: everything literal up to the next `'`; nothing escapes inside.
    fn process_single_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.push(rune_str(open));
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .to_string(),
                    );
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    /// `"…"`: literal except `$` expansions; the escape character escapes only `"`, `$` and
    /// itself and is otherwise kept.
    fn process_double_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.push(rune_str(open));
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .to_string(),
                    );
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(first) => {
                    self.next();
                    let mut ch = first;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // An escape character at the very end is dropped (the missing
                            // closing quote is reported on the next turn).
                            None => continue,
                            Some(p) if p == '"' || p == '$' || p == self.lex.escape => {
                                self.next();
                                ch = p;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    /// `$NAME`, `${NAME}` and `${NAME<op>word}`; the cursor is on the `$`.
    /// `<<` and the whitespace after it stay one raw piece of the word, so that `<< EOF`
    /// lexes as the single heredoc word `<< EOF` (the heredoc parser drops the space).
    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.next();
        let mut result = String::from("<<");
        while let Some(ch) = self.peek().filter(|&c| is_space(c)) {
            result.push(ch);
            self.next();
        }
        result
    }

    fn process_dollar(&mut self) -> Result<String, String> {
        self.next();

        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            let (value, found) = self.get_env(&name);
            if !found && self.lex.skip_unset_env {
                return Ok(format!("${name}"));
            }
            return Ok(value);
        }

        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".to_string()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".to_string()),
            Some(_) => {}
        }
        let name = self.process_name();
        let first = self.next();
        let mut modifier = String::from(rune_str(first));

        match first {
            Some('}') => {
                let (value, set) = self.get_env(&name);
                if !set && self.lex.skip_unset_env {
                    return Ok(format!("${{{name}}}"));
                }
                Ok(value)
            }
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let mut op = first;
                let null_is_unset = op == Some(':');
                if null_is_unset {
                    op = self.next();
                    modifier.push(rune_str(op));
                }
                let pattern_op = matches!(op, Some('#' | '%'));
                if null_is_unset && pattern_op {
                    return Err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let word = match self.process_stop_on(Some('}'), pattern_op) {
                    Ok((word, _)) => word,
                    Err(err) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".to_string());
                        }
                        return Err(err);
                    }
                };

                let (value, set) = self.get_env(&name);
                if self.lex.skip_unset_env && !set {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let unset_or_null = !set || (null_is_unset && value.is_empty());

                match op {
                    Some('-') => Ok(if unset_or_null { word } else { value }),
                    Some('+') => Ok(if unset_or_null { String::new() } else { word }),
                    Some('?') => {
                        let default = if !set {
                            "is not allowed to be unset"
                        } else if null_is_unset && value.is_empty() {
                            "is not allowed to be empty"
                        } else {
                            return Ok(value);
                        };
                        let message = if word.is_empty() { default } else { &word };
                        Err(format!("{name}: {message}"))
                    }
                    Some(op @ ('%' | '#')) => {
                        // One `%`/`#` removes the shortest match, two the longest. The doubled
                        // character is looked for after expansion.
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        if op == '%' {
                            pattern::trim_suffix(pattern, &value, greedy)
                        } else {
                            pattern::trim_prefix(pattern, &value, greedy)
                        }
                    }
                    _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            Some('/') => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pat = match self.process_stop_on(Some('/'), true) {
                    Ok((pat, _)) => pat,
                    Err(err) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '/' in ${}".to_string());
                        }
                        return Err(err);
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((replacement, _)) => replacement,
                    Err(err) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".to_string());
                        }
                        return Err(err);
                    }
                };

                let (value, set) = self.get_env(&name);
                if self.lex.skip_unset_env && !set {
                    // BuildKit writes one `/` here even for `${NAME//…}`.
                    return Ok(format!("${{{name}/{pat}/{replacement}}}"));
                }
                pattern::replace(&pat, &value, &replacement, replace_all)
            }
            _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }

    /// A variable name: a run of decimal digits, one special parameter character, or a run
    /// of letters, digits and `_` (Unicode letters and digits count).
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek()
                    && is_digit(d)
                {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }
}

/// POSIX special parameters (`$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`, `$0`).
fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go's `unicode.IsSpace` (the White_Space property, which is what Rust uses too).
fn is_space(ch: char) -> bool {
    ch.is_whitespace()
}

/// Go's `unicode.IsLetter`: general category L.
pub(crate) fn is_letter(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_alphabetic();
    }
    ch.general_category_group() == GeneralCategoryGroup::Letter
}

/// Go's `unicode.IsDigit`: general category Nd.
pub(crate) fn is_digit(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_digit();
    }
    ch.general_category() == GeneralCategory::DecimalNumber
}
