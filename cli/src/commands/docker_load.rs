//! `kiln build --load`: the built image also goes to a docker daemon, as a `docker save`
//! archive POSTed to the Engine API's `/images/load` over the daemon's unix socket.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use kiln_engine::{Destination, ManifestFormat, Output, OutputKind};

use super::Failure;

/// Where docker listens when `DOCKER_HOST` does not say.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// A reachable docker daemon and the archive file the build writes for it.
pub struct DockerLoad {
    socket: PathBuf,
    archive: tempfile::NamedTempFile,
}

impl DockerLoad {
    /// Finds the daemon at `$DOCKER_HOST` (`unix://PATH`) or `/var/run/docker.sock`, and
    /// fails, saying where it looked, when none answers there.
    pub fn connect() -> Result<Self, Failure> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|host| !host.is_empty());
        let (socket, looked) = match &host {
            Some(host) => match host.strip_prefix("unix://") {
                Some(path) => (PathBuf::from(path), format!("DOCKER_HOST={host}")),
                None => {
                    return Err(Failure::msg(format!(
                        "--load needs a docker daemon on a unix socket, and DOCKER_HOST={host} is not one (unix:///PATH)"
                    )));
                }
            },
            None => (
                PathBuf::from(DEFAULT_SOCKET),
                format!("unix://{DEFAULT_SOCKET} (DOCKER_HOST is not set)"),
            ),
        };
        UnixStream::connect(&socket).map_err(|e| {
            Failure::msg(format!(
                "--load: no docker daemon is reachable at {looked}: {e}"
            ))
        })?;
        let archive = tempfile::Builder::new()
            .prefix("kiln-load-")
            .suffix(".tar")
            .tempfile()
            .map_err(|e| Failure::msg(format!("--load: cannot make a temporary file: {e}")))?;
        Ok(DockerLoad { socket, archive })
    }

    /// The output that writes the image, named `tags`, as the archive docker loads.
    pub fn output(&self, tags: &[String]) -> Output {
        Output {
            kind: OutputKind::Docker,
            dest: Some(Destination::Path(self.archive.path().to_path_buf())),
            compression: None,
            format: ManifestFormat::Docker,
            names: tags.to_vec(),
            push: false,
            push_by_digest: false,
        }
    }

    /// Sends the archive to the daemon; returns what it reported (`Loaded image: app:1`).
    pub fn load(&self) -> Result<String, Failure> {
        let failed = |e: &dyn std::fmt::Display| {
            Failure::msg(format!(
                "--load: cannot load the image into docker at {}: {e}",
                self.socket.display()
            ))
        };
        let mut archive = File::open(self.archive.path()).map_err(|e| failed(&e))?;
        let size = archive.metadata().map_err(|e| failed(&e))?.len();
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| failed(&e))?;
        // HTTP/1.0, so that the daemon answers without chunked encoding and then closes.
        write!(
            stream,
            "POST /images/load?quiet=1 HTTP/1.0\r\nHost: docker\r\n\
             Content-Type: application/x-tar\r\nContent-Length: {size}\r\n\r\n"
        )
        .and_then(|()| std::io::copy(&mut archive, &mut stream).map(drop))
        .map_err(|e| failed(&e))?;
        let mut response = BufReader::new(stream);
        let mut status = String::new();
        response.read_line(&mut status).map_err(|e| failed(&e))?;
        let mut line = String::new();
        while response.read_line(&mut line).map_err(|e| failed(&e))? > 2 {
            line.clear();
        }
        let mut body = String::new();
        response.read_to_string(&mut body).map_err(|e| failed(&e))?;
        if status.split(' ').nth(1) != Some("200") {
            return Err(failed(&format!("{} {}", status.trim(), body.trim())));
        }
        // A JSON message per line: `{"stream": "…"}`, or `{"error": "…"}` when it failed.
        let mut said = String::new();
        for message in body
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            if let Some(error) = message["error"].as_str() {
                return Err(failed(&error));
            }
            said.push_str(message["stream"].as_str().unwrap_or_default());
        }
        Ok(said.trim_end().to_string())
    }
}
