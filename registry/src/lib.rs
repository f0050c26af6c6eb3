//! kiln's registry side: the distribution API client with Docker's authentication
//! ([`client`]), docker's credential store ([`credentials`]), registries' own TLS material
//! ([`certs`]), pulling images into the local store ([`pull`]) and pushing them out
//! ([`push`]).

pub mod certs;
pub mod client;
pub mod credentials;
pub mod pull;
pub mod push;

pub use client::{RegistryClient, RegistryOptions};
