//! The parse tree: a [`Document`] of instruction [`Node`]s.

/// A heredoc attached to an instruction (`<<EOF` … `EOF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, with quotes removed.
    pub name: String,
    /// The digits before `<<` (`3<<EOF`), else 0.
    pub file_descriptor: u32,
    /// False when any part of the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and the terminator.
    pub chomp: bool,
    /// The body lines with their newlines, without the terminator line, not yet chomped.
    pub content: String,
}

impl Heredoc {
    /// The body as the instruction sees it: with leading tabs removed from every line when
    /// `chomp` is set.
    pub fn chomped_content(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|line| line.trim_start_matches('\t'))
            .collect()
    }
}

/// One instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The instruction keyword, lower-cased (`run`, `copy`, or an unknown word).
    pub keyword: String,
    /// Leading `--flag[=value]` words, quotes removed (`--` ends them and is dropped).
    pub flags: Vec<String>,
    /// The arguments, split as BuildKit's line parser for this keyword does; for `ENV` and
    /// `LABEL`, triples of key, value and separator (`=` or empty for the legacy form).
    pub args: Vec<String>,
    /// The instruction that `ONBUILD` wraps.
    pub nested: Option<Box<Node>>,
    /// The arguments were given in JSON (exec) form.
    pub json: bool,
    /// The instruction text with continuations joined, as the parser saw it.
    pub original: String,
    /// Heredocs, in the order their `<<` words appear.
    pub heredocs: Vec<Heredoc>,
    /// 1-based first line of the instruction.
    pub start_line: usize,
    /// 1-based last line, including continuation lines and heredoc bodies.
    pub end_line: usize,
    /// The comment lines directly above the instruction, `#` and surrounding space removed.
    pub comments: Vec<String>,
}

/// The parser directives at the top of a Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directives {
    /// The escape character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# syntax=` value, if present.
    pub syntax: Option<String>,
    /// `# check=` value, if present.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Parser directives.
    pub directives: Directives,
    /// Instructions in file order.
    pub nodes: Vec<Node>,
    /// Non-fatal findings, such as empty continuation lines.
    pub warnings: Vec<String>,
}
