//! The shell lexer (in progress).
