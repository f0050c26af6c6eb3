//! BuildKit's AST dump format (`Node.Dump()`), the `result` files of its parser tests.

use kiln_solver::go_quote;

use super::ast::{Document, Node};

impl Node {
    /// The node in BuildKit's dump format: `run ["--flag"] "arg" …`, with Go string quoting.
    pub fn dump(&self) -> String {
        let mut out = self.keyword.to_lowercase();
        if !self.flags.is_empty() {
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            out.push_str(&format!(" [{}]", quoted.join(" ")));
        }
        if let Some(nested) = &self.nested {
            out.push_str(&format!(" ({})", nested.dump()));
        }
        for arg in &self.args {
            out.push(' ');
            out.push_str(&go_quote(arg));
        }
        out.trim().to_string()
    }
}

impl Document {
    /// The whole document as BuildKit's parser tests expect it: one `(…)` line per
    /// instruction, ending in a single newline.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push('(');
            out.push_str(&node.dump());
            out.push_str(")\n");
        }
        let mut out = out.trim().to_string();
        out.push('\n');
        out
    }
}
