//! Image references (`busybox`, `host:5000/ns/app:1.0@sha256:…`), parsed and normalised as
//! Docker's `distribution/reference` does.

use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";

/// A normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// Repository path (`library/busybox`).
    pub path: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `algo:hex` digest pin.
    pub digest: Option<String>,
}

/// Why a reference could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format{}: {input:?}", .detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct ReferenceError {
    input: String,
    detail: Option<String>,
}

impl Reference {
    /// Parses and normalises like `docker pull`: adds `docker.io`, `library/` and `:latest`.
    pub fn parse_normalized(input: &str) -> Result<Reference, ReferenceError> {
        let err = |detail: Option<&str>| ReferenceError {
            input: input.to_string(),
            detail: detail.map(str::to_string),
        };
        if input.is_empty() || input.len() > 255 + 200 {
            return Err(err(None));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (input, None),
        };
        if let Some(d) = digest
            && !valid_digest(d)
        {
            return Err(err(Some("invalid digest")));
        }
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(err(Some("invalid tag")));
        }
        let (domain, path) = split_domain(name);
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err(Some(&format!(
                "repository name ({path}) must be lowercase"
            ))));
        }
        if !valid_domain(&domain) || !path.split('/').all(valid_path_component) {
            return Err(err(None));
        }
        if domain.len() + 1 + path.len() > 255 {
            return Err(err(Some(
                "repository name must not be more than 255 characters",
            )));
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// `domain/path`, the repository name.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The short form Docker shows: `busybox:latest` for Docker Hub library images.
    pub fn familiar(&self) -> String {
        let repo = if self.domain == DOCKER_HUB {
            self.path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.repository()
        };
        let mut out = repo;
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse_normalized(s)
    }
}

/// Docker's `splitDockerDomain`: the first component is a domain only if it looks like one.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        domain
    };
    let path = if domain == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    (domain, path)
}

/// `host[:port]`: dot-separated alphanumeric labels (inner `-` allowed), or `[ipv6]`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (h, Some(p)),
        _ => (domain, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
pub(crate) fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !t.is_empty()
        && t.len() <= 128
        && word(t.as_bytes()[0])
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algo:hex` with at least 32 hex digits.
fn valid_digest(d: &str) -> bool {
    d.split_once(':').is_some_and(|(algo, hex)| {
        !algo.is_empty()
            && algo.as_bytes()[0].is_ascii_alphabetic()
            && algo
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_+.".contains(&b))
            && hex.len() >= 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse_normalized(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("user/app:1.0"), "docker.io/user/app:1.0");
        assert_eq!(
            norm("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("127.0.0.1:5000/ns/app:v2"), "127.0.0.1:5000/ns/app:v2");
        let pinned = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&pinned),
            format!("docker.io/library/busybox@sha256:{}", "a".repeat(64))
        );
        let both = format!("busybox:1@sha256:{}", "b".repeat(64));
        assert_eq!(
            norm(&both),
            format!("docker.io/library/busybox:1@sha256:{}", "b".repeat(64))
        );
        assert_eq!(
            Reference::parse_normalized("busybox").unwrap().familiar(),
            "busybox:latest"
        );
        assert_eq!(
            Reference::parse_normalized("[::1]:5000/a").unwrap().domain,
            "[::1]:5000"
        );
        assert_eq!(norm("a/b__c/d-e.f_g"), "docker.io/a/b__c/d-e.f_g:latest");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "a:",
            ":tag",
            "a@sha256:abc",
            "-a",
            "a-",
            "a..b",
            "a/b:-x",
            "host:port/a",
            "a b",
        ] {
            assert!(Reference::parse_normalized(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Reference::parse_normalized("Busybox")
                .unwrap_err()
                .to_string(),
            "invalid reference format: repository name (library/Busybox) must be lowercase: \"Busybox\""
        );
    }
}
