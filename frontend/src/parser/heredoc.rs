//! Finding heredoc words (`<<EOF`, `<<-"EOF"`, `3<<EOF`) in an instruction line.

use super::ast::Heredoc;
use crate::error::{Error, Result};
use crate::shell::Lexer;

/// Instructions whose arguments may name heredocs.
pub(super) fn keyword_takes_heredocs(keyword: &str) -> bool {
    matches!(keyword, "add" | "copy" | "run")
}

/// Parses one word as a heredoc: `^(\d*)<<(-?)\s*([^<]*)$` with a non-empty single-word name.
/// Returns `Ok(None)` for a word that is not a heredoc and an error for an unbalanced quote.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>> {
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match after.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, after),
    };
    let rest = rest.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    // Go's ParseUint error (overflow) is ignored upstream and leaves 0.
    let file_descriptor = word[..digits].parse::<u32>().unwrap_or(0);

    let mut lexer = Lexer::new('\\');
    lexer.skip_unset_env = true;
    let no_env: [(String, String); 0] = [];
    let words = lexer
        .process_words(rest, &no_env[..])
        .map_err(|e| Error::new(e.message))?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    lexer.raw_quotes = true;
    let raw_words = lexer
        .process_words(rest, &no_env[..])
        .map_err(|e| Error::new(e.message))?;
    if raw_words.len() != 1 {
        return Err(Error::new(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        )));
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Ok(Some(Heredoc {
        name: name.clone(),
        file_descriptor,
        expand: quotes(name) == quotes(&raw_words[0]),
        chomp,
        content: String::new(),
    }))
}

/// The heredocs named in an instruction line, in order.
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>> {
    let mut lexer = Lexer::new('\\');
    lexer.raw_quotes = true;
    lexer.raw_escapes = true;
    lexer.skip_unset_env = true;
    let no_env: [(String, String); 0] = [];
    // Upstream ignores lexing errors here: a line that does not lex has no heredocs.
    let words = lexer.process_words(line, &no_env[..]).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}
