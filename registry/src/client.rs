//! The OCI distribution API over HTTP(S), authenticating as docker does: anonymously,
//! with basic auth, or with a bearer token from the registry's token service (Docker Hub's
//! flow), using credentials from `~/.docker/config.json` and its credential helpers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_image::{DOCKER_HUB, Reference};

use crate::credentials::{CredentialSource, credential_for};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};

/// How long a registry may keep kiln waiting for an answer or the next bytes of one.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an upload may take (the whole request body is sent within one wait).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// The largest token service answer kiln reads.
const MAX_TOKEN_REPLY_BYTES: u64 = 1 << 20;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts (`host:port`) spoken to over plain HTTP besides loopback ones
    /// (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// Where credentials come from; `None` for docker's configuration on this machine.
    pub credentials: Option<std::sync::Arc<dyn CredentialSource>>,
}

/// What a repository is accessed for: the scope of a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reading manifests and blobs.
    Pull,
    /// Reading and writing.
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// A client for every registry a build talks to; it caches each repository's
/// `Authorization` header.
pub struct RegistryClient {
    http: Client,
    options: RegistryOptions,
    /// (registry, repository, access) → the header that worked.
    authorizations: Mutex<HashMap<(String, String, Access), String>>,
}

impl RegistryClient {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Result<Self> {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // Each wait for an answer, and each read of a body, ends after this: a stalled
            // registry fails the build instead of hanging it.
            .timeout(STALL_TIMEOUT)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            options,
            authorizations: Mutex::default(),
        })
    }

    /// The base URL of `domain`'s API: `https://host/v2/`, or `http://` for loopback
    /// hosts and insecure registries.
    pub fn api_base(&self, domain: &str) -> String {
        let host = if domain == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            domain
        };
        let insecure =
            is_loopback(domain) || self.options.insecure_registries.iter().any(|r| r == domain);
        format!("{}://{host}/v2/", if insecure { "http" } else { "https" })
    }

    /// `{api}/{repository}/{rest}` for `reference`'s repository.
    pub fn url(&self, reference: &Reference, rest: &str) -> String {
        format!(
            "{}{}/{rest}",
            self.api_base(&reference.domain),
            reference.path
        )
    }

    /// Sends the request `build` makes, authenticated for `access` to `reference`'s
    /// repository: when the registry answers 401, follows its challenge and sends it once
    /// more. `build` may be called twice, so it must be able to make the body again.
    pub fn send(
        &self,
        reference: &Reference,
        access: Access,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response> {
        let key = (reference.domain.clone(), reference.path.clone(), access);
        let known = self.authorizations.lock().unwrap().get(&key).cloned();
        let attempt = |authorization: Option<&str>| {
            let mut request = build(&self.http);
            if let Some(value) = authorization {
                request = request.header(AUTHORIZATION, value);
            }
            request
                .send()
                .with_context(|| format!("cannot reach the registry {}", reference.domain))
        };
        let response = attempt(known.as_deref())?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let authorization = self.authorize(reference, access, &challenge_of(&response))?;
        let response = attempt(Some(&authorization))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            bail!(
                "{}: the registry refused the credentials (401 Unauthorized){}",
                reference.repository(),
                login_hint(&reference.domain)
            );
        }
        self.authorizations
            .lock()
            .unwrap()
            .insert(key, authorization);
        Ok(response)
    }

    /// The stored credentials for `domain`.
    fn credential_for(&self, domain: &str) -> Option<(String, String)> {
        match &self.options.credentials {
            Some(source) => source.credential_for(domain),
            None => credential_for(domain),
        }
    }

    /// The `Authorization` header that answers `challenge` for `access` to `reference`'s
    /// repository, with the stored credentials.
    fn authorize(&self, reference: &Reference, access: Access, challenge: &str) -> Result<String> {
        let scope = format!("repository:{}:{}", reference.path, access.actions());
        self.answer(
            &reference.domain,
            challenge,
            Some(&scope),
            self.credential_for(&reference.domain).as_ref(),
        )
        .map_err(|err| match err {
            Refusal::NeedsLogin => anyhow::anyhow!(
                "{}: the registry needs a login (401 Unauthorized){}",
                reference.repository(),
                login_hint(&reference.domain)
            ),
            Refusal::Other(err) => err.context(reference.repository()),
        })
    }

    /// The `Authorization` header that answers `domain`'s `challenge` (basic, or a bearer
    /// token for `scope` from the token service) with `credential`. The credential goes to
    /// a token service only over HTTPS or on the registry's own host: a registry must not
    /// be able to send them anywhere in plain text.
    fn answer(
        &self,
        domain: &str,
        challenge: &str,
        scope: Option<&str>,
        credential: Option<&(String, String)>,
    ) -> Result<String, Refusal> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match credential {
                Some((user, password)) => Ok(basic(user, password)),
                None => Err(Refusal::NeedsLogin),
            },
            "bearer" => {
                let realm = params
                    .get("realm")
                    .context("the registry's bearer challenge names no realm")?;
                let mut query = Vec::new();
                if let Some(scope) = scope {
                    query.push(("scope", scope));
                }
                if let Some(service) = params.get("service") {
                    query.push(("service", service.as_str()));
                }
                let mut request = self.http.get(realm).query(&query);
                if credential.is_some() && !may_receive_credentials(realm, domain) {
                    return Err(Refusal::Other(anyhow::anyhow!(
                        "not sending the credentials for {domain} to the token service \
                         {realm}: it is neither HTTPS nor on the registry's host"
                    )));
                }
                if let Some((user, password)) = credential {
                    request = request.header(AUTHORIZATION, basic(user, password));
                }
                let response = request
                    .send()
                    .with_context(|| format!("cannot reach the token service {realm}"))?;
                if response.status() == StatusCode::UNAUTHORIZED {
                    return Err(if credential.is_some() {
                        Refusal::Other(anyhow::anyhow!(
                            "the token service {realm} refused the credentials"
                        ))
                    } else {
                        Refusal::NeedsLogin
                    });
                }
                if !response.status().is_success() {
                    return Err(Refusal::Other(anyhow::anyhow!(
                        "the token service {realm} answered {}",
                        response.status()
                    )));
                }
                let body = crate::pull::read_limited(response, MAX_TOKEN_REPLY_BYTES)
                    .map_err(anyhow::Error::from)?
                    .with_context(|| {
                        format!(
                            "the token service {realm} answered more than \
                             {MAX_TOKEN_REPLY_BYTES} bytes"
                        )
                    })?;
                let body: serde_json::Value = serde_json::from_slice(&body)
                    .context("the token service answered something other than JSON")?;
                let token = body["token"]
                    .as_str()
                    .or_else(|| body["access_token"].as_str())
                    .context("the token service answered without a token")?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(Refusal::Other(anyhow::anyhow!(
                "the registry asks for an unsupported authentication ({challenge:?})"
            ))),
        }
    }

    /// Checks that `user` and `password` open `domain` (`kiln login`).
    pub fn check_login(&self, domain: &str, user: &str, password: &str) -> Result<()> {
        let base = self.api_base(domain);
        let response = self
            .http
            .get(&base)
            .send()
            .with_context(|| format!("cannot reach the registry {domain}"))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            check(response, domain)?;
            return Ok(());
        }
        let credential = (user.to_string(), password.to_string());
        let authorization = self
            .answer(domain, &challenge_of(&response), None, Some(&credential))
            .map_err(|err| match err {
                Refusal::NeedsLogin => anyhow::anyhow!("{domain}: login refused"),
                Refusal::Other(err) => err.context(format!("{domain}: login refused")),
            })?;
        let response = self
            .http
            .get(&base)
            .header(AUTHORIZATION, authorization)
            .send()
            .with_context(|| format!("cannot reach the registry {domain}"))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            bail!("{domain}: login refused: wrong user name or password");
        }
        check(response, domain)?;
        Ok(())
    }
}

/// Whether registry `domain`'s credentials may go to the token service at `realm`: over
/// HTTPS, or to the registry's own host.
fn may_receive_credentials(realm: &str, domain: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(realm) else {
        return false;
    };
    let registry_host = domain
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(domain, |(host, _)| host);
    url.scheme() == "https"
        || url.host_str().is_some_and(|host| {
            host.trim_matches(['[', ']']) == registry_host.trim_matches(['[', ']'])
        })
}

/// Why a challenge could not be answered.
enum Refusal {
    /// There are no credentials and the registry wants some.
    NeedsLogin,
    /// Anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Refusal {
    fn from(err: anyhow::Error) -> Self {
        Refusal::Other(err)
    }
}

/// Fails with the reference and the registry's answer when `response` is not a success.
pub fn check(response: Response, what: &str) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    if detail.is_empty() {
        bail!("{what}: the registry answered {status}")
    } else {
        bail!("{what}: the registry answered {status}: {detail}")
    }
}

/// The `WWW-Authenticate` header of a 401 answer (empty when missing).
fn challenge_of(response: &Response) -> String {
    response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn login_hint(domain: &str) -> String {
    format!("; log in with `kiln login {domain}`")
}

/// Whether `domain` (`host[:port]`) is this machine.
fn is_loopback(domain: &str) -> bool {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        domain.rsplit_once(':').map_or(domain, |(h, _)| h)
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Bearer realm="…",service="…"` → (`Bearer`, {realm, service}).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or_default())
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_string());
        rest = remaining.trim_start_matches(',').trim();
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_https_realms_and_the_registry_host_only() {
        assert!(may_receive_credentials(
            "https://auth.example/token",
            "reg.example"
        ));
        assert!(may_receive_credentials(
            "http://127.0.0.1:9000/token",
            "127.0.0.1:5000"
        ));
        assert!(may_receive_credentials(
            "http://[::1]:9000/token",
            "[::1]:5000"
        ));
        assert!(!may_receive_credentials(
            "http://evil.example/token",
            "reg.example"
        ));
        assert!(!may_receive_credentials(
            "http://localhost:9000/token",
            "127.0.0.1:5000"
        ));
        assert!(!may_receive_credentials(
            "file:///etc/passwd",
            "reg.example"
        ));
    }

    #[test]
    fn challenges_parse_like_docker_hubs() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/busybox:pull");
        let (scheme, params) = parse_challenge(r#"Basic realm="basic-realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params["realm"], "basic-realm");
    }

    #[test]
    fn loopback_hosts_speak_plain_http() {
        let client = RegistryClient::new(RegistryOptions {
            insecure_registries: vec!["registry.lan:5000".into()],
            credentials: None,
        })
        .unwrap();
        assert_eq!(
            client.api_base("127.0.0.1:5000"),
            "http://127.0.0.1:5000/v2/"
        );
        assert_eq!(client.api_base("localhost"), "http://localhost/v2/");
        assert_eq!(client.api_base("[::1]:5000"), "http://[::1]:5000/v2/");
        assert_eq!(
            client.api_base("registry.lan:5000"),
            "http://registry.lan:5000/v2/"
        );
        assert_eq!(
            client.api_base("docker.io"),
            "https://registry-1.docker.io/v2/"
        );
        assert_eq!(client.api_base("ghcr.io"), "https://ghcr.io/v2/");
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
    }
}
