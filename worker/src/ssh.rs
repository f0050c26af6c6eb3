//! SSH agent forwarding (`--ssh`, `RUN --mount=type=ssh`): where a build's agents are, the
//! socket a step sees for each, and the relay between the two. The relay is read-only, as
//! BuildKit's agent proxy: a step may list keys and ask for signatures, but not add,
//! remove or lock keys of the agent it is lent.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The agent id of `--ssh default` and of a mount without `id=`.
pub const DEFAULT_ID: &str = "default";

/// The longest agent message relayed (OpenSSH's `AGENT_MAX_LEN`).
const MAX_MESSAGE: usize = 256 * 1024;

/// `SSH_AGENT_FAILURE`, the answer to a refused request.
const AGENT_FAILURE: u8 = 5;

/// The requests a step may make: `SSH_AGENTC_REQUEST_IDENTITIES` and
/// `SSH_AGENTC_SIGN_REQUEST`.
const ALLOWED_REQUESTS: [u8; 2] = [11, 13];

/// A byte stream to an agent.
pub trait AgentStream: Read + Write + Send {}
impl<T: Read + Write + Send> AgentStream for T {}

/// The agents a build may lend its steps, by id.
pub trait SshAgents: Send + Sync {
    /// Fails, saying why, when agent `id` was not given to the build.
    fn check(&self, id: &str) -> Result<()>;
    /// A new connection to agent `id`.
    fn connect(&self, id: &str) -> Result<Box<dyn AgentStream>>;
}

/// The agents of this machine's command line (`--ssh ID[=SOCKET|KEY,…]`).
#[derive(Debug, Default)]
pub struct LocalSshAgents {
    sockets: BTreeMap<String, PathBuf>,
    /// `ssh-agent`s serving keys given as files, killed with this value.
    spawned: Vec<SpawnedAgent>,
}

/// One `--ssh` value: an id and the sockets or key files it names (none: `$SSH_AUTH_SOCK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// The agent id steps mount it by.
    pub id: String,
    /// Its socket, or key files.
    pub paths: Vec<PathBuf>,
}

impl std::str::FromStr for SshSpec {
    type Err = String;

    /// buildx's form: `ID[=PATH[,PATH…]]`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (id, paths) = spec.split_once('=').unwrap_or((spec, ""));
        if id.is_empty() {
            return Err(format!(
                "invalid ssh spec {spec:?}: expected ID[=SOCKET|KEY,…]"
            ));
        }
        Ok(Self {
            id: id.to_string(),
            paths: paths
                .split(',')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        })
    }
}

impl LocalSshAgents {
    /// The agents `specs` name; keys given as files are loaded into an `ssh-agent` run for
    /// the build, its socket in `runtime_dir` (a private directory).
    pub fn new(specs: &[SshSpec], runtime_dir: &Path) -> Result<Self> {
        let mut agents = Self::default();
        for spec in specs {
            if agents.sockets.contains_key(&spec.id) {
                bail!("duplicate agent ID {:?}", spec.id);
            }
            let socket = agents
                .socket_for(spec, runtime_dir)
                .with_context(|| format!("--ssh {}", spec.id))?;
            agents.sockets.insert(spec.id.clone(), socket);
        }
        Ok(agents)
    }

    /// Whether no agent was given.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The socket serving `spec`: the one it names (or `$SSH_AUTH_SOCK`), or a new agent's
    /// holding the keys it names.
    fn socket_for(&mut self, spec: &SshSpec, runtime_dir: &Path) -> Result<PathBuf> {
        let paths = if spec.paths.is_empty() {
            match std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
                Some(socket) => vec![PathBuf::from(socket)],
                None => bail!("invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set"),
            }
        } else {
            spec.paths.clone()
        };
        let mut sockets = Vec::new();
        let mut keys = Vec::new();
        for path in paths {
            let meta =
                fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
            if meta.file_type().is_socket() {
                sockets.push(path);
            } else {
                keys.push(path);
            }
        }
        match (sockets.len(), keys.is_empty()) {
            (0, false) => {
                let dir = runtime_dir.join(format!("agent-{}", self.spawned.len()));
                let agent = SpawnedAgent::start(&dir, &keys)?;
                let socket = agent.socket.clone();
                self.spawned.push(agent);
                Ok(socket)
            }
            (1, true) => Ok(sockets.remove(0)),
            (0, true) => unreachable!("paths is never empty"),
            (_, true) => bail!("only single socket allowed"),
            (_, false) => bail!("invalid combination of keys and sockets"),
        }
    }
}

impl SshAgents for LocalSshAgents {
    fn check(&self, id: &str) -> Result<()> {
        if self.sockets.is_empty() {
            bail!("no SSH key {id:?} forwarded from the client");
        }
        if !self.sockets.contains_key(id) {
            bail!("unset ssh forward key {id}");
        }
        Ok(())
    }

    fn connect(&self, id: &str) -> Result<Box<dyn AgentStream>> {
        self.check(id)?;
        let socket = &self.sockets[id];
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("failed to connect to {}", socket.display()))?;
        Ok(Box::new(stream))
    }
}

/// An `ssh-agent` holding the keys of one `--ssh` value.
#[derive(Debug)]
struct SpawnedAgent {
    process: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl SpawnedAgent {
    /// Starts `ssh-agent` on `dir/agent.sock` and adds `keys` with `ssh-add`.
    fn start(dir: &Path, keys: &[PathBuf]) -> Result<Self> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let socket = dir.join("agent.sock");
        let process = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| match err.kind() {
                ErrorKind::NotFound => anyhow!(
                    "keys given as files are served by ssh-agent, which is not installed \
                     (apt-get install openssh-client); or give an agent's socket"
                ),
                _ => anyhow::Error::new(err).context("cannot start ssh-agent"),
            })?;
        let agent = Self {
            process,
            socket,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while UnixStream::connect(&agent.socket).is_err() {
            if Instant::now() > deadline {
                bail!("ssh-agent did not open {}", agent.socket.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for key in keys {
            let added = Command::new("ssh-add")
                .arg("-q")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .env("SSH_ASKPASS_REQUIRE", "never")
                .env_remove("DISPLAY")
                .stdin(Stdio::null())
                .output()
                .context("cannot run ssh-add")?;
            if !added.status.success() {
                bail!(
                    "failed to parse {}: {}",
                    key.display(),
                    String::from_utf8_lossy(&added.stderr).trim()
                );
            }
        }
        Ok(agent)
    }
}

impl Drop for SpawnedAgent {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Relays agent messages from `client` to `agent` and their answers back until `client`
/// closes; requests other than listing keys and signing are answered with a failure
/// without reaching the agent.
pub fn relay(client: &mut (impl Read + Write), agent: &mut dyn AgentStream) -> Result<()> {
    while let Some(request) = read_message(client)? {
        if request
            .first()
            .is_some_and(|t| ALLOWED_REQUESTS.contains(t))
        {
            write_message(agent, &request)?;
            let answer = read_message(agent)?.context("the SSH agent closed the connection")?;
            write_message(client, &answer)?;
        } else {
            write_message(client, &[AGENT_FAILURE])?;
        }
    }
    Ok(())
}

/// One length-prefixed agent message; `None` at a clean end of stream.
fn read_message(stream: &mut (impl Read + ?Sized)) -> Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length == 0 || length > MAX_MESSAGE {
        bail!("invalid SSH agent message of {length} bytes");
    }
    let mut message = vec![0; length];
    stream.read_exact(&mut message)?;
    Ok(Some(message))
}

fn write_message(stream: &mut (impl Write + ?Sized), message: &[u8]) -> Result<()> {
    let mut framed = Vec::with_capacity(4 + message.len());
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed)?;
    stream.flush()?;
    Ok(())
}

/// The socket a step sees for one agent, owned and moded as its mount says.
pub struct StepSocket {
    listener: UnixListener,
    path: PathBuf,
    id: String,
}

impl StepSocket {
    /// Listens on `path` for agent `id`, with `mode`, `uid` and `gid`.
    pub fn bind(path: &Path, id: &str, mode: u32, uid: u32, gid: u32) -> Result<Self> {
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            id: id.to_string(),
        })
    }

    /// The socket's path on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections, each relayed to a new connection to the agent, until `stop` is
    /// set (and a connection wakes this up): see [`StepSocket::wake`]. Each connection is
    /// served on a thread of `scope`.
    pub fn serve<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        agents: &'scope dyn SshAgents,
        stop: &'scope AtomicBool,
    ) {
        for client in self.listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut client) = client else { continue };
            scope.spawn(move || {
                // A step that cannot reach its agent sees the connection closed; its ssh
                // client reports that.
                if let Ok(mut agent) = agents.connect(&self.id) {
                    let _ = relay(&mut client, agent.as_mut());
                }
            });
        }
    }

    /// Wakes [`serve`](Self::serve) up after `stop` was set.
    pub fn wake(&self) {
        let _ = UnixStream::connect(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(&mut out, message).unwrap();
        out
    }

    /// An agent that answers each request with its type byte + 100.
    struct EchoAgent {
        input: std::io::Cursor<Vec<u8>>,
        seen: Vec<u8>,
    }

    impl Read for EchoAgent {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.input.position() as usize == self.input.get_ref().len() {
                let mut seen = std::io::Cursor::new(std::mem::take(&mut self.seen));
                let request = read_message(&mut seen).unwrap().unwrap();
                *self.input.get_mut() = framed(&[request[0] + 100]);
                self.input.set_position(0);
            }
            self.input.read(buf)
        }
    }

    impl Write for EchoAgent {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.seen.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A client side: requests in, answers collected.
    struct Client {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Client {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Client {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_listing_and_signing_reach_the_agent() {
        // List keys, add a key (17), sign, lock (22), remove all (19).
        let requests: Vec<u8> = [&[11u8][..], &[17, 1, 2], &[13, 9], &[22, 0], &[19]]
            .iter()
            .flat_map(|m| framed(m))
            .collect();
        let mut client = Client {
            input: std::io::Cursor::new(requests),
            output: Vec::new(),
        };
        let mut agent = EchoAgent {
            input: std::io::Cursor::new(Vec::new()),
            seen: Vec::new(),
        };
        relay(&mut client, &mut agent).unwrap();
        let answers: Vec<u8> = [111u8, AGENT_FAILURE, 113, AGENT_FAILURE, AGENT_FAILURE]
            .iter()
            .flat_map(|t| framed(&[*t]))
            .collect();
        assert_eq!(client.output, answers);
    }

    #[test]
    fn oversized_and_empty_messages_are_refused() {
        let mut huge = std::io::Cursor::new(((MAX_MESSAGE + 1) as u32).to_be_bytes().to_vec());
        assert!(read_message(&mut huge).is_err());
        let mut empty = std::io::Cursor::new(0u32.to_be_bytes().to_vec());
        assert!(read_message(&mut empty).is_err());
        let mut end = std::io::Cursor::new(Vec::new());
        assert!(read_message(&mut end).unwrap().is_none());
    }

    #[test]
    fn specs_are_parsed_as_buildx_does() {
        assert_eq!(
            "default".parse::<SshSpec>().unwrap(),
            SshSpec {
                id: "default".into(),
                paths: vec![]
            }
        );
        assert_eq!(
            "gh=/a/key,/b/key".parse::<SshSpec>().unwrap(),
            SshSpec {
                id: "gh".into(),
                paths: vec!["/a/key".into(), "/b/key".into()]
            }
        );
        assert!("=x".parse::<SshSpec>().is_err());
    }

    #[test]
    fn unknown_ids_are_named() {
        let none = LocalSshAgents::default();
        assert_eq!(
            none.check("default").unwrap_err().to_string(),
            "no SSH key \"default\" forwarded from the client"
        );
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let agents = LocalSshAgents::new(
            &[SshSpec {
                id: "gh".into(),
                paths: vec![socket.clone()],
            }],
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            agents.check("default").unwrap_err().to_string(),
            "unset ssh forward key default"
        );
        agents.check("gh").unwrap();
        let mixed = LocalSshAgents::new(
            &[SshSpec {
                id: "x".into(),
                paths: vec![socket, dir.path().join("missing")],
            }],
            dir.path(),
        );
        assert!(
            format!("{:#}", mixed.err().unwrap()).contains("cannot read"),
            "a missing path is named"
        );
    }
}
