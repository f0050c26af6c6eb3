//! kiln's Dockerfile frontend: from a Dockerfile's bytes to an op DAG.
//!
//! The pipeline mirrors BuildKit's: [`parser`] turns bytes into an AST of instruction nodes
//! (BuildKit-exact, including its dump format); the shell lexer expands variables and splits
//! words; instructions are typed and their flags checked; stages are resolved and lowered
//! into a [`kiln_solver::Definition`].

pub mod error;
pub mod instructions;
pub mod lower;
pub mod parser;
pub mod shell;

pub use error::{Error, ErrorKind, Location, Result};
