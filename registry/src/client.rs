//! The OCI distribution API over HTTP(S), authenticating as docker does: anonymously,
//! with basic auth, or with a bearer token from the registry's token service (Docker Hub's
//! flow, or an OAuth2 refresh token for identity tokens), using credentials from
//! `~/.docker/config.json` and its credential helpers, and the registry's own CAs and
//! client certificate from its `certs.d` directory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_image::{DOCKER_HUB, Reference};

use crate::certs;
use crate::credentials::{Credential, CredentialSource, stored_credential};
use reqwest::StatusCode;
use reqwest::blocking::{Client, ClientBuilder, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};

/// How long a registry may keep kiln waiting for an answer or the next bytes of one.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an upload may take (the whole request body is sent within one wait).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// The largest token service answer kiln reads.
const MAX_TOKEN_REPLY_BYTES: u64 = 1 << 20;

/// The OAuth2 client id kiln gives token services when it trades an identity token.
const OAUTH_CLIENT_ID: &str = "kiln";

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts (`host:port`) spoken to over plain HTTP besides loopback ones without a
    /// `certs.d` directory (`--insecure-registry`).
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
    /// The HTTP client of registries without TLS material of their own.
    http: Client,
    options: RegistryOptions,
    /// (registry, repository, access) → the header that worked.
    authorizations: Mutex<HashMap<(String, String, Access), String>>,
    /// Registry → the HTTP client with its `certs.d` material (TLS settings are per
    /// client), built when first needed.
    host_clients: Mutex<HashMap<String, Client>>,
}

/// The settings every registry HTTP client shares.
fn client_builder() -> ClientBuilder {
    Client::builder()
        .connect_timeout(Duration::from_secs(30))
        // Each wait for an answer, and each read of a body, ends after this: a stalled
        // registry fails the build instead of hanging it.
        .timeout(STALL_TIMEOUT)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
}

impl RegistryClient {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Result<Self> {
        Ok(Self {
            http: client_builder().build()?,
            options,
            authorizations: Mutex::default(),
            host_clients: Mutex::default(),
        })
    }

    /// Whether `domain` is spoken to over plain HTTP: it is named with
    /// `--insecure-registry`, or it is a loopback host without a `certs.d` directory.
    fn plain_http(&self, domain: &str) -> bool {
        self.options.insecure_registries.iter().any(|r| r == domain)
            || (is_loopback(domain) && certs::host_dir(domain).is_none())
    }

    /// The base URL of `domain`'s API: `https://host/v2/`, or `http://` for insecure
    /// registries and loopback hosts without TLS material in `certs.d`.
    pub fn api_base(&self, domain: &str) -> String {
        let host = if domain == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            domain
        };
        let scheme = if self.plain_http(domain) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2/")
    }

    /// The HTTP client for registry `domain` (and its token service): one with the CAs
    /// and client certificate of its `certs.d` directory, else the shared one.
    fn http_for(&self, domain: &str) -> Result<Client> {
        if self.plain_http(domain) {
            return Ok(self.http.clone());
        }
        let Some(dir) = certs::host_dir(domain) else {
            return Ok(self.http.clone());
        };
        let mut clients = self.host_clients.lock().unwrap();
        if let Some(client) = clients.get(domain) {
            return Ok(client.clone());
        }
        let client = certs::configure(client_builder(), &dir)
            .and_then(|builder| Ok(builder.build()?))
            .with_context(|| {
                format!(
                    "cannot use the TLS material for {domain} in {}",
                    dir.display()
                )
            })?;
        clients.insert(domain.to_string(), client.clone());
        Ok(client)
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
        let http = self.http_for(&reference.domain)?;
        let attempt = |authorization: Option<&str>| {
            let mut request = build(&http);
            if let Some(value) = authorization {
                request = request.header(AUTHORIZATION, value);
            }
            request
                .send()
                .map_err(|err| unreachable(&reference.domain, err))
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

    /// The stored credential for `domain`.
    fn credential(&self, domain: &str) -> Option<Credential> {
        match &self.options.credentials {
            Some(source) => source.credential(domain),
            None => stored_credential(domain),
        }
    }

    /// The `Authorization` header that answers `challenge` for `access` to `reference`'s
    /// repository, with the stored credentials.
    fn authorize(&self, reference: &Reference, access: Access, challenge: &str) -> Result<String> {
        let scope = format!("repository:{}:{}", reference.path, access.actions());
        self.answer(
            &reference.domain,
            challenge,
            &[&scope],
            self.credential(&reference.domain).as_ref(),
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
    /// token for `scopes` from the token service) with `credential`. The credential goes to
    /// a token service only over HTTPS or on the registry's own host: a registry must not
    /// be able to send them anywhere in plain text.
    fn answer(
        &self,
        domain: &str,
        challenge: &str,
        scopes: &[&str],
        credential: Option<&Credential>,
    ) -> Result<String, Refusal> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match credential {
                Some(Credential::Password { user, password }) => Ok(basic(user, password)),
                Some(Credential::IdentityToken(_)) => Err(Refusal::Other(anyhow::anyhow!(
                    "the registry {domain} asks for basic auth, but its stored credential \
                     is an identity token, which only a token service takes"
                ))),
                None => Err(Refusal::NeedsLogin),
            },
            "bearer" => {
                let realm = params
                    .get("realm")
                    .context("the registry's bearer challenge names no realm")?;
                if credential.is_some() && !may_receive_credentials(realm, domain) {
                    return Err(Refusal::Other(anyhow::anyhow!(
                        "not sending the credentials for {domain} to the token service \
                         {realm}: it is neither HTTPS nor on the registry's host"
                    )));
                }
                let service = params.get("service").map(String::as_str);
                let http = self.http_for(domain)?;
                let request = match credential {
                    // OAuth2's refresh-token grant, as containerd trades identity tokens.
                    Some(Credential::IdentityToken(token)) => http
                        .post(realm)
                        .form(&refresh_token_form(token, service, scopes)),
                    // Docker's token flow: a GET, with basic auth when logged in.
                    _ => {
                        let mut query: Vec<_> = scopes.iter().map(|s| ("scope", *s)).collect();
                        query.extend(service.map(|service| ("service", service)));
                        let request = http.get(realm).query(&query);
                        match credential {
                            Some(Credential::Password { user, password }) => {
                                request.header(AUTHORIZATION, basic(user, password))
                            }
                            _ => request,
                        }
                    }
                };
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
        let http = self.http_for(domain)?;
        let response = http
            .get(&base)
            .send()
            .map_err(|err| unreachable(domain, err))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            check(response, domain)?;
            return Ok(());
        }
        let credential = Credential::Password {
            user: user.to_string(),
            password: password.to_string(),
        };
        let authorization = self
            .answer(domain, &challenge_of(&response), &[], Some(&credential))
            .map_err(|err| match err {
                Refusal::NeedsLogin => anyhow::anyhow!("{domain}: login refused"),
                Refusal::Other(err) => err.context(format!("{domain}: login refused")),
            })?;
        let response = http
            .get(&base)
            .header(AUTHORIZATION, authorization)
            .send()
            .map_err(|err| unreachable(domain, err))?;
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

/// The form that trades identity token `token` for an access token to `scopes` (OAuth2's
/// refresh-token grant, as containerd sends it: the scopes joined by spaces).
fn refresh_token_form(
    token: &str,
    service: Option<&str>,
    scopes: &[&str],
) -> Vec<(&'static str, String)> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", token.to_string()),
        ("client_id", OAUTH_CLIENT_ID.to_string()),
    ];
    form.extend(service.map(|service| ("service", service.to_string())));
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    form
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

/// The error for a request to registry `domain` that got no answer; when TLS failed, it
/// says where the registry's CA or kiln's client certificate go.
fn unreachable(domain: &str, err: reqwest::Error) -> anyhow::Error {
    let err = anyhow::Error::from(err);
    // rustls's words for an unknown CA, and for a handshake the server broke off.
    let chain = format!("{err:#}");
    let hint = if chain.contains("invalid peer certificate") {
        format!(
            " (if a private CA signed its certificate, put the CA in {})",
            certs::suggested_dir(domain).join("ca.crt").display()
        )
    } else if chain.contains("received fatal alert") {
        format!(
            " (the registry refused the TLS handshake; if it wants a client certificate, \
             put it and its key in {} as client.cert and client.key)",
            certs::suggested_dir(domain).display()
        )
    } else {
        String::new()
    };
    err.context(format!("cannot reach the registry {domain}{hint}"))
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
    fn identity_tokens_are_traded_with_the_refresh_token_grant() {
        let form = refresh_token_form(
            "refresh-me",
            Some("reg.example"),
            &["repository:app:pull", "repository:base:pull"],
        );
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            form,
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", "refresh-me"),
                ("client_id", "kiln"),
                ("service", "reg.example"),
                ("scope", "repository:app:pull repository:base:pull"),
            ]
        );
        let form = refresh_token_form("t", None, &[]);
        assert!(
            form.iter().all(|(k, _)| *k != "service" && *k != "scope"),
            "{form:?}"
        );
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
