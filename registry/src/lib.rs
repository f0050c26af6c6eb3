//! kiln's registry side: the distribution API client with Docker's authentication
//! ([`client`]), pulling images into the local store ([`pull`]) and pushing them out
//! ([`push`]).

pub mod client;
pub mod pull;
pub mod push;

pub use client::{RegistryClient, RegistryOptions};
