//! Registry credentials where docker keeps them: `config.json` in `$DOCKER_CONFIG` or
//! `~/.docker`, read through its `auths`, `credHelpers` and `credsStore`; `kiln login`
//! writes `auths` entries, or hands the credentials to the helper the file names.

use std::fs;
use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use docker_credential::DockerCredential;
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

/// What a registry login left behind.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password, sent with basic auth.
    Password {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`, or a helper's secret for the user
    /// `<token>`), traded at the registry's token service for access tokens.
    IdentityToken(String),
}

impl Credential {
    /// The user name and password, when it is a password.
    pub fn into_password(self) -> Option<(String, String)> {
        match self {
            Credential::Password { user, password } => Some((user, password)),
            Credential::IdentityToken(_) => None,
        }
    }
}

impl std::fmt::Debug for Credential {
    /// Names the kind and the user, never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password { user, .. } => write!(f, "Password {{ user: {user:?} }}"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken"),
        }
    }
}

impl From<DockerCredential> for Credential {
    fn from(credential: DockerCredential) -> Self {
        match credential {
            DockerCredential::UsernamePassword(user, password) => {
                Credential::Password { user, password }
            }
            DockerCredential::IdentityToken(token) => Credential::IdentityToken(token),
        }
    }
}

/// The credential stored for `domain`, if any: from its `credHelpers` helper, its
/// `auths` entry (`identitytoken` first, as docker), else the `credsStore` helper.
pub fn stored_credential(domain: &str) -> Option<Credential> {
    let file = fs::File::open(config_path()).ok()?;
    credential_in(BufReader::new(file), domain)
}

/// The credential for `domain` in the docker configuration `config` reads.
fn credential_in(config: impl std::io::Read, domain: &str) -> Option<Credential> {
    docker_credential::get_credential_from_reader(config, config_key(domain))
        .ok()
        .map(Credential::from)
}

/// The user name and password stored for `domain`, if any (an identity token is not one).
pub fn credential_for(domain: &str) -> Option<(String, String)> {
    stored_credential(domain)?.into_password()
}

/// Where a client's registry credentials come from: docker's configuration on this
/// machine, or (for a remote builder) the client of the build, asked through its session.
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    /// The user name and password for registry `domain`, if any.
    fn credential_for(&self, domain: &str) -> Option<(String, String)>;

    /// The credential for registry `domain`, if any; sources that know only passwords
    /// keep the default.
    fn credential(&self, domain: &str) -> Option<Credential> {
        self.credential_for(domain)
            .map(|(user, password)| Credential::Password { user, password })
    }
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

/// The credential helper that keeps `key`'s credentials: its `credHelpers` entry, else
/// the `credsStore` one.
fn helper_for(config: &serde_json::Value, key: &str) -> Option<String> {
    [&config["credHelpers"][key], &config["credsStore"]]
        .into_iter()
        .find_map(|name| name.as_str().filter(|name| !name.is_empty()))
        .map(|name| format!("docker-credential-{name}"))
}

/// Runs credential helper `program` for `action` (`store`, `erase`) with `input` on its
/// standard input, as docker does; fails with what it said when it fails.
fn run_helper(program: &str, action: &str, input: &[u8]) -> Result<()> {
    let mut child = Command::new(program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot run the credential helper {program}, which {} names",
                config_path().display()
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that stops reading says why through its exit status.
        let _ = stdin.write_all(input);
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("the credential helper {program} failed"))?;
    if !output.status.success() {
        // Helpers written with docker's library print their errors on stdout.
        let said = [&output.stderr, &output.stdout]
            .into_iter()
            .map(|text| String::from_utf8_lossy(text).trim().to_string())
            .filter(|text| !text.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        bail!(
            "the credential helper `{program} {action}` failed ({}): {said}",
            output.status
        );
    }
    Ok(())
}

/// Where [`store`] put a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredIn {
    /// In docker's `config.json`, at this path.
    ConfigFile(PathBuf),
    /// With this credential helper (`docker-credential-NAME`).
    Helper(String),
}

impl std::fmt::Display for StoredIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredIn::ConfigFile(path) => write!(f, "{}", path.display()),
            StoredIn::Helper(program) => f.write_str(program),
        }
    }
}

/// Stores `user` and `password` for `domain`: with the credential helper `config.json`
/// names for it (leaving an empty `auths` entry, as docker), else in `auths`.
pub fn store(domain: &str, user: &str, password: &str) -> Result<StoredIn> {
    let mut config = read_config()?;
    let key = config_key(domain);
    let helper = helper_for(&config, key);
    let entry = match &helper {
        Some(program) => {
            let input = serde_json::json!({"ServerURL": key, "Username": user, "Secret": password});
            run_helper(program, "store", input.to_string().as_bytes())?;
            serde_json::json!({})
        }
        None => serde_json::json!({"auth": base64_encode(format!("{user}:{password}").as_bytes())}),
    };
    if !config["auths"].is_object() {
        config["auths"] = serde_json::json!({});
    }
    config["auths"][key] = entry;
    let path = write_config(&config)?;
    Ok(helper.map_or(StoredIn::ConfigFile(path), StoredIn::Helper))
}

/// Forgets `domain`'s login: has its credential helper, if any, erase the credentials,
/// then drops its `auths` entry. Returns whether there was a login (an `auths` entry).
pub fn remove(domain: &str) -> Result<bool> {
    let mut config = read_config()?;
    let key = config_key(domain);
    if config["auths"].get(key).is_none() {
        return Ok(false);
    }
    if let Some(program) = helper_for(&config, key) {
        run_helper(&program, "erase", key.as_bytes())?;
    }
    if let Some(auths) = config["auths"].as_object_mut() {
        auths.remove(key);
    }
    write_config(&config)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(config: &str, domain: &str) -> Option<Credential> {
        credential_in(config.as_bytes(), domain)
    }

    #[test]
    fn identity_tokens_and_passwords_are_told_apart() {
        let config = format!(
            r#"{{"auths":{{
                "reg.example":{{"auth":"{}"}},
                "acr.example":{{"auth":"{}","identitytoken":"refresh-me"}},
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "helped.example":{{}}}}}}"#,
            base64_encode(b"kiln:pw"),
            base64_encode(b"00000000-0000-0000-0000-000000000000:"),
            base64_encode(b"hub:pw"),
        );
        assert_eq!(
            credential(&config, "reg.example"),
            Some(Credential::Password {
                user: "kiln".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            credential(&config, "acr.example"),
            Some(Credential::IdentityToken("refresh-me".into()))
        );
        assert_eq!(
            credential(&config, DOCKER_HUB),
            Some(Credential::Password {
                user: "hub".into(),
                password: "pw".into()
            })
        );
        // An empty entry (a login kept by a helper) with no helper named: nothing.
        assert_eq!(credential(&config, "helped.example"), None);
        assert_eq!(credential(&config, "other.example"), None);
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let password = Credential::Password {
            user: "kiln".into(),
            password: "hunter2".into(),
        };
        let token = Credential::IdentityToken("refresh-me".into());
        assert_eq!(format!("{password:?}"), r#"Password { user: "kiln" }"#);
        assert_eq!(format!("{token:?}"), "IdentityToken");
    }

    #[test]
    fn the_host_s_helper_comes_before_the_store() {
        let config = serde_json::json!({
            "credsStore": "desktop",
            "credHelpers": {"gcr.io": "gcloud", "empty.example": ""}
        });
        assert_eq!(
            helper_for(&config, "gcr.io").as_deref(),
            Some("docker-credential-gcloud")
        );
        assert_eq!(
            helper_for(&config, "empty.example").as_deref(),
            Some("docker-credential-desktop")
        );
        assert_eq!(helper_for(&serde_json::json!({}), "gcr.io"), None);
    }
}
