//! Mutual TLS for TCP: the daemon proves itself with a certificate and accepts only
//! clients whose certificates its CA signed; the client does the same the other way.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// PEM files for one side of a TLS connection (BuildKit's `--tlscacert`, `--tlscert`,
/// `--tlskey`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs the other side's certificate.
    pub ca: PathBuf,
    /// This side's certificate.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl TlsFiles {
    fn identity(&self) -> Result<Identity> {
        Ok(Identity::from_pem(
            read(&self.cert, "certificate")?,
            read(&self.key, "key")?,
        ))
    }

    /// The daemon's configuration: its identity, and client certificates required and
    /// checked against the CA.
    pub fn server(&self) -> Result<ServerTlsConfig> {
        Ok(ServerTlsConfig::new()
            .identity(self.identity()?)
            .client_ca_root(Certificate::from_pem(read(&self.ca, "CA certificate")?))
            .client_auth_optional(false))
    }

    /// The client's configuration for a daemon that should be `server_name`.
    pub fn client(&self, server_name: &str) -> Result<ClientTlsConfig> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca, "CA certificate")?))
            .identity(self.identity()?)
            .domain_name(server_name))
    }
}
