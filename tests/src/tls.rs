//! A private PKI for the TLS tests, made with the `openssl` command: a CA, a server
//! certificate for 127.0.0.1 and a client certificate, all PEM, in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;

/// A CA and the certificates it signed; the files go when the value drops.
pub struct TestPki {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The server certificate (subjectAltName IP:127.0.0.1).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

/// `openssl ARGS…` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args), true);
}

/// A P-256 key in `NAME.key` and a request for `/CN=CN` in `NAME.csr`, then the
/// certificate `NAME.crt` the CA signs with the extensions `extensions`.
fn issue(dir: &Path, name: &str, cn: &str, extensions: &str) {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions).expect("write the extensions");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ],
    );
}

impl TestPki {
    /// Makes the CA and both certificates.
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        openssl(
            path,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=kiln test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        issue(
            path,
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        );
        issue(
            path,
            "client",
            "kiln test client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        );
        TestPki {
            ca: path.join("ca.crt"),
            server_cert: path.join("server.crt"),
            server_key: path.join("server.key"),
            client_cert: path.join("client.crt"),
            client_key: path.join("client.key"),
            _dir: dir,
        }
    }
}
