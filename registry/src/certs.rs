//! A registry's own TLS material, where docker and containerd keep it: the directory
//! `certs.d/HOST[:PORT]/` holds extra CA roots (`*.crt`) and client certificates
//! (`NAME.cert` with its key `NAME.key`), all PEM.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use reqwest::blocking::ClientBuilder;
use reqwest::{Certificate, Identity};

/// The environment variable that replaces [`DEFAULT_BASE_DIRS`]: colon-separated
/// directories, each holding one directory per registry host.
pub const CERTS_DIRS_ENV: &str = "KILN_CERTS_DIRS";

/// Where registry TLS material is looked for, in order: kiln's, docker's, containerd's.
pub const DEFAULT_BASE_DIRS: [&str; 3] = [
    "/etc/kiln/certs.d",
    "/etc/docker/certs.d",
    "/etc/containerd/certs.d",
];

/// The `certs.d` directories, from [`CERTS_DIRS_ENV`] when it is set.
fn base_dirs() -> Vec<PathBuf> {
    match std::env::var_os(CERTS_DIRS_ENV) {
        Some(dirs) => std::env::split_paths(&dirs)
            .filter(|dir| !dir.as_os_str().is_empty())
            .collect(),
        None => DEFAULT_BASE_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// The first existing `BASE/HOST` directory for registry `host` (`host[:port]`), if any.
pub fn host_dir(host: &str) -> Option<PathBuf> {
    host_dir_in(&base_dirs(), host)
}

/// Where `host`'s TLS material is, or would be looked for first.
pub fn suggested_dir(host: &str) -> PathBuf {
    host_dir(host).unwrap_or_else(|| {
        base_dirs()
            .into_iter()
            .next()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIRS[0]))
            .join(host)
    })
}

/// The first existing `BASE/HOST` directory among `bases`.
fn host_dir_in(bases: &[PathBuf], host: &str) -> Option<PathBuf> {
    // A host with a path separator, `.` or `..` names no directory of its own.
    if host.is_empty() || host.contains('/') || host == "." || host == ".." {
        return None;
    }
    bases
        .iter()
        .map(|base| base.join(host))
        .find(|dir| dir.is_dir())
}

/// The TLS files of one host directory, paired as docker pairs them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostFiles {
    /// Extra CA roots (`*.crt`).
    pub roots: Vec<String>,
    /// Client certificates and their keys (`NAME.cert`, `NAME.key`).
    pub identities: Vec<(String, String)>,
}

impl HostFiles {
    /// Sorts the file names of a host directory: every `.crt` is a root, every `.cert` must
    /// have its `.key` and every `.key` its `.cert`; other files are ignored.
    pub fn pair(names: &[String]) -> Result<HostFiles> {
        let mut names: Vec<&String> = names.iter().collect();
        names.sort();
        let has = |name: &str| names.iter().any(|n| *n == name);
        let mut files = HostFiles::default();
        for name in &names {
            if name.ends_with(".crt") {
                files.roots.push(name.to_string());
            } else if let Some(stem) = name.strip_suffix(".cert") {
                let key = format!("{stem}.key");
                if !has(&key) {
                    bail!(
                        "missing key {key} for client certificate {name} \
                         (CA certificates must use the extension .crt)"
                    );
                }
                files.identities.push((name.to_string(), key));
            } else if let Some(stem) = name.strip_suffix(".key") {
                let cert = format!("{stem}.cert");
                if !has(&cert) {
                    bail!("missing client certificate {cert} for key {name}");
                }
            }
        }
        Ok(files)
    }
}

/// Adds the TLS material of host directory `dir` to `builder`: its CA roots beside the
/// built-in ones, and its client certificate.
pub fn configure(mut builder: ClientBuilder, dir: &Path) -> Result<ClientBuilder> {
    let names = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    let files = HostFiles::pair(&names)?;
    for root in &files.roots {
        let path = dir.join(root);
        let certificates = Certificate::from_pem_bundle(&read(&path)?)
            .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
        if certificates.is_empty() {
            bail!("{} holds no PEM certificate", path.display());
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    match files.identities.as_slice() {
        [] => {}
        [(cert, key)] => {
            let (cert, key) = (dir.join(cert), dir.join(key));
            let mut pem = read(&cert)?;
            pem.push(b'\n');
            pem.extend(read(&key)?);
            let identity = Identity::from_pem(&pem).with_context(|| {
                format!(
                    "{} and {} are not a PEM client certificate and its key",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(identity);
        }
        _ => bail!(
            "{} holds more than one client certificate; kiln uses one per registry",
            dir.display()
        ),
    }
    Ok(builder)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_first_base_with_the_host_wins() {
        let (kiln, docker) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let bases = [kiln.path().to_path_buf(), docker.path().to_path_buf()];
        std::fs::create_dir(docker.path().join("reg.example:5000")).unwrap();
        assert_eq!(
            host_dir_in(&bases, "reg.example:5000"),
            Some(docker.path().join("reg.example:5000"))
        );
        std::fs::create_dir(kiln.path().join("reg.example:5000")).unwrap();
        assert_eq!(
            host_dir_in(&bases, "reg.example:5000"),
            Some(kiln.path().join("reg.example:5000"))
        );
        assert_eq!(host_dir_in(&bases, "reg.example"), None, "the port counts");
        assert_eq!(host_dir_in(&bases, ".."), None);
    }

    #[test]
    fn files_pair_as_dockers_do() {
        let files = HostFiles::pair(&names(&[
            "client.key",
            "ca.crt",
            "README",
            "client.cert",
            "other-ca.crt",
        ]))
        .unwrap();
        assert_eq!(files.roots, ["ca.crt", "other-ca.crt"]);
        assert_eq!(
            files.identities,
            [("client.cert".to_string(), "client.key".to_string())]
        );
        assert_eq!(
            HostFiles::pair(&[]).unwrap(),
            HostFiles::default(),
            "an empty directory adds nothing"
        );
    }

    #[test]
    fn a_certificate_without_its_key_or_a_key_without_its_certificate_is_named() {
        let err = HostFiles::pair(&names(&["ca.crt", "client.cert"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("missing key client.key for client certificate client.cert"),
            "{err}"
        );
        let err = HostFiles::pair(&names(&["client.key", "client.crt"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing client certificate client.cert for key client.key"
        );
    }

    #[test]
    fn bad_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "not a certificate\n").unwrap();
        let err = configure(reqwest::blocking::Client::builder(), dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!(
                "{} holds no PEM certificate",
                dir.path().join("ca.crt").display()
            )),
            "{err:#}"
        );

        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        std::fs::write(dir.path().join("client.cert"), "garbage").unwrap();
        std::fs::write(dir.path().join("client.key"), "garbage").unwrap();
        let err = configure(reqwest::blocking::Client::builder(), dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!(
                "{} and {} are not a PEM client certificate and its key",
                dir.path().join("client.cert").display(),
                dir.path().join("client.key").display()
            )),
            "{err:#}"
        );
    }
}
