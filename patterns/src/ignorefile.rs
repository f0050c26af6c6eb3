//! Reading a `.dockerignore` file: moby/patternmatcher's `ignorefile.ReadAll`.

use crate::clean;

/// Longest line Go's `bufio.Scanner` accepts; Docker fails on longer ones.
const MAX_LINE: usize = 64 * 1024;

/// The patterns in `.dockerignore` text, as Docker reads them: a UTF-8 BOM
/// is dropped, lines starting with `#` are comments, lines are trimmed and
/// empty ones skipped, and each pattern is cleaned with its leading `/`
/// removed (so `/a` and `a` both mean the context's `a`). A `!` prefix is
/// kept.
pub fn read_ignore_file(text: &[u8]) -> Result<Vec<String>, String> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut patterns = Vec::new();
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() && lines.peek().is_none() {
            break;
        }
        if line.len() > MAX_LINE {
            return Err("error reading .dockerignore: bufio.Scanner: token too long".into());
        }
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        patterns.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    Ok(patterns)
}
