//! The Dockerfile parser, a faithful port of BuildKit's `frontend/dockerfile/parser`.
//!
//! [`parse`] turns bytes into a [`Document`]: parser directives, and one [`Node`] per
//! instruction with its flags, arguments (split per instruction the way BuildKit does),
//! heredocs and line range. Nothing is expanded here; see [`crate::shell`].

mod ast;

pub use ast::{Directives, Document, Heredoc, Node};
