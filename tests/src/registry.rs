//! A real registry for the tests: Debian's `docker-registry`, on a free loopback port, with
//! its storage and access log in a temporary directory, optionally behind htpasswd basic
//! auth, optionally over TLS. It stops when the value drops.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// A running `docker-registry`.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The TLS a registry serves: its certificate and key (PEM), and the CA its clients'
/// certificates must come from when it asks for them.
pub struct RegistryTls<'a> {
    /// The server certificate.
    pub certificate: &'a Path,
    /// Its key.
    pub key: &'a Path,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<&'a Path>,
}

impl Registry {
    /// Starts a registry on plain HTTP; with `user`, only that user and password get in.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        Registry::start_with(user, None)
    }

    /// Starts a registry, over TLS when `tls` says how; with `user`, only that user and
    /// password get in.
    pub fn start_with(user: Option<(&str, &str)>, tls: Option<&RegistryTls>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some(tls) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.certificate.display(),
                tls.key.display()
            ));
            if let Some(ca) = tls.client_ca {
                config.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 5).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{name}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("access.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry (scripts/test installs it)");
        crate::wait_until(
            Duration::from_secs(20),
            || TcpStream::connect(&host).is_ok(),
            || {
                format!(
                    "docker-registry did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
        );
        Registry {
            host,
            child,
            log,
            _dir: dir,
        }
    }

    /// How many requests so far had `needle` in their access-log line, e.g.
    /// `"PUT /v2/app/blobs/uploads/`.
    pub fn requests(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
