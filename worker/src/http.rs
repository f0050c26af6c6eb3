//! HTTP(S) sources (ADD of a URL): the download, checked against `--checksum`.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// A downloaded file, not yet in any snapshot.
#[derive(Debug)]
pub struct Download {
    /// The content, in a temporary file.
    pub file: tempfile::NamedTempFile,
    /// `sha256:…` of the content.
    pub digest: String,
    /// The server's `Last-Modified`, which becomes the file's mtime.
    pub last_modified: Option<SystemTime>,
}

/// Fetches `url` into a temporary file in `scratch` (a directory private to kiln). With
/// `expected` (`sha256:…`, `sha384:…` or `sha512:…`), content with another digest is an
/// error.
pub fn download(url: &str, expected: Option<&str>, scratch: &Path) -> Result<Download> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        // Each wait for the server and each read of the body ends after this: a stalled
        // server fails the step instead of hanging it.
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut response = client
        .get(url)
        .send()
        .with_context(|| format!("cannot download {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("cannot download {url}: the server answered {status}");
    }
    let last_modified = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let mut file = tempfile::Builder::new()
        .prefix("download-")
        .tempfile_in(scratch)
        .with_context(|| format!("cannot create a file in {}", scratch.display()))?;
    let mut sha256 = Sha256::new();
    let mut check = expected.map(Checker::new).transpose()?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).with_context(|| format!("cannot download {url}")),
        };
        sha256.update(&buffer[..n]);
        if let Some(check) = &mut check {
            check.update(&buffer[..n]);
        }
        file.write_all(&buffer[..n])?;
    }
    file.flush()?;
    let digest = format!("sha256:{}", hex::encode(sha256.finalize()));
    if let (Some(check), Some(expected)) = (check, expected) {
        let actual = check.finish();
        if actual != expected {
            bail!("checksum mismatch for {url}: expected {expected}, got {actual}");
        }
    }
    Ok(Download {
        file,
        digest,
        last_modified,
    })
}

/// The `--checksum` algorithm, hashing as the download streams.
enum Checker {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl Checker {
    fn new(expected: &str) -> Result<Self> {
        Ok(match expected.split_once(':').map(|(algo, _)| algo) {
            Some("sha256") => Self::Sha256(Sha256::new()),
            Some("sha384") => Self::Sha384(Sha384::new()),
            Some("sha512") => Self::Sha512(Sha512::new()),
            _ => bail!("unsupported checksum {expected}"),
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> String {
        match self {
            Self::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Self::Sha384(h) => format!("sha384:{}", hex::encode(h.finalize())),
            Self::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}
