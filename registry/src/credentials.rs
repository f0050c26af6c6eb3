//! Registry credentials where docker keeps them: `config.json` in `$DOCKER_CONFIG` or
//! `~/.docker`, read through its `auths`, `credHelpers` and `credsStore`; `kiln login`
//! writes `auths` entries.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_image::DOCKER_HUB;

use crate::client::base64_encode;

/// Docker Hub's registry host, as BuildKit names it when it asks a client for
/// credentials.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// The key docker files `domain`'s credentials under (Docker Hub has its historic one).
fn config_key(domain: &str) -> &str {
    if domain == DOCKER_HUB || domain == DOCKER_HUB_REGISTRY {
        "https://index.docker.io/v1/"
    } else {
        domain
    }
}

/// The user name and password stored for `domain`, if any.
pub fn credential_for(domain: &str) -> Option<(String, String)> {
    match docker_credential::get_credential(config_key(domain)) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            Some((user, password))
        }
        _ => None,
    }
}

/// Where a client's registry credentials come from: docker's configuration on this
/// machine, or (for a remote builder) the client of the build, asked through its session.
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    /// The user name and password for registry `domain`, if any.
    fn credential_for(&self, domain: &str) -> Option<(String, String)>;
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn config_path() -> PathBuf {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".docker")
        })
        .join("config.json")
}

/// docker's configuration, which must be a JSON object (`{}` when there is none).
fn read_config() -> Result<serde_json::Value> {
    let path = config_path();
    let config: serde_json::Value = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    anyhow::ensure!(
        config.is_object(),
        "{} holds JSON that is not an object; docker's configuration is one",
        path.display()
    );
    Ok(config)
}

/// Writes the config readable by its owner only, atomically.
fn write_config(config: &serde_json::Value) -> Result<PathBuf> {
    let path = config_path();
    let dir = path.parent().context("config path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temp = dir.join(format!(".config.json.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(config)?)?;
    file.sync_all()?;
    fs::rename(&temp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Stores `user` and `password` for `domain` in `auths`; returns the file written.
pub fn store(domain: &str, user: &str, password: &str) -> Result<PathBuf> {
    let mut config = read_config()?;
    if !config["auths"].is_object() {
        config["auths"] = serde_json::json!({});
    }
    config["auths"][config_key(domain)] =
        serde_json::json!({"auth": base64_encode(format!("{user}:{password}").as_bytes())});
    write_config(&config)
}

/// Forgets `domain`'s `auths` entry; returns whether there was one.
pub fn remove(domain: &str) -> Result<bool> {
    let mut config = read_config()?;
    let removed = config["auths"]
        .as_object_mut()
        .and_then(|auths| auths.remove(config_key(domain)))
        .is_some();
    if removed {
        write_config(&config)?;
    }
    Ok(removed)
}
