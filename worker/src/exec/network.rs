//! A RUN step's network: its own namespace with outbound access through `slirp4netns`
//! (the default, like docker's bridge: the host's loopback is out of reach), an empty
//! namespace (`none`), or the host's (`host`); and the `/etc/resolv.conf` each gets.

use std::fs::{self, File};
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use kiln_solver::NetworkMode;
use rustix::mount::{UnmountFlags, mount_bind, unmount};
use rustix::thread::UnshareFlags;

/// The program that gives the default network outbound access.
const SLIRP: &str = "slirp4netns";

/// Docker's nameservers for a sandbox whose host lists only loopback ones.
const DEFAULT_NAMESERVERS: [&str; 4] = [
    "8.8.8.8",
    "8.8.4.4",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
];

/// Default networks for a build's steps, made ahead: creating a namespace and starting
/// slirp4netns take milliseconds a step need not wait for. Each network serves one step;
/// taking one makes the next in the background, so one spare is ready for the next step.
/// Dropping the pool waits for a network being made, so none outlives the build.
pub struct NetworkPool {
    /// Where the networks' namespaces are bind-mounted, a directory each (the state
    /// directory's scratch space, where a killed kiln's are found).
    scratch: PathBuf,
    spare: Arc<Mutex<Option<SandboxNetwork>>>,
    /// The thread making the next spare.
    making: Mutex<Option<JoinHandle<()>>>,
}

impl NetworkPool {
    /// A pool whose networks live in directories under `scratch`.
    pub fn new(scratch: impl Into<PathBuf>) -> Self {
        Self {
            scratch: scratch.into(),
            spare: Arc::default(),
            making: Mutex::default(),
        }
    }

    /// The network for a step of network `mode`: for `default`, the spare one if it is
    /// ready, else one made now.
    pub fn take(&self, mode: NetworkMode) -> Result<SandboxNetwork> {
        if mode != NetworkMode::Default {
            return Ok(SandboxNetwork::default());
        }
        let spare = self.spare.lock().unwrap().take();
        let network = match spare {
            Some(network) => network,
            None => SandboxNetwork::create(&self.scratch)?,
        };
        let mut making = self.making.lock().unwrap();
        if making.as_ref().is_none_or(|thread| thread.is_finished()) {
            let (scratch, slot) = (self.scratch.clone(), Arc::clone(&self.spare));
            *making = Some(std::thread::spawn(move || {
                // A failure here shows when a step makes its own network.
                if let Ok(network) = SandboxNetwork::create(&scratch) {
                    slot.lock().unwrap().get_or_insert(network);
                }
            }));
        }
        Ok(network)
    }
}

impl Drop for NetworkPool {
    fn drop(&mut self) {
        if let Some(thread) = self.making.get_mut().unwrap().take() {
            let _ = thread.join();
        }
    }
}

/// The network namespace prepared for one step, released on drop.
#[derive(Default)]
pub struct SandboxNetwork {
    /// The namespace the sandbox joins, bind-mounted at this path; `None` when the
    /// runtime makes an empty one (`none`) or the step shares the host's.
    namespace: Option<PathBuf>,
    /// `slirp4netns` serving the namespace; it exits when its stdin closes, also when kiln
    /// is killed.
    slirp: Option<(Child, ChildStdin)>,
    /// The directory holding the namespace's mount point.
    dir: Option<tempfile::TempDir>,
}

impl SandboxNetwork {
    /// A namespace of its own, served by slirp4netns, mounted in a new directory under
    /// `scratch`.
    fn create(scratch: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("net-")
            .tempdir_in(scratch)
            .with_context(|| format!("cannot create a directory in {}", scratch.display()))?;
        let path = dir.path().join("netns");
        let mut network = Self::default();
        network.dir = Some(dir);
        create_namespace(&path)?;
        network.namespace = Some(path.clone());
        network.slirp = Some(start_slirp(&path)?);
        Ok(network)
    }

    /// The namespace the sandbox joins, when it is not the runtime's to create.
    pub fn namespace(&self) -> Option<&Path> {
        self.namespace.as_deref()
    }
}

impl Drop for SandboxNetwork {
    fn drop(&mut self) {
        if let Some(path) = self.namespace.take() {
            let _ = unmount(&path, UnmountFlags::DETACH);
            let _ = fs::remove_file(&path);
        }
        if let Some((mut child, stdin)) = self.slirp.take() {
            // slirp4netns exits once its stdin closes; the kernel then tears the namespace
            // down, which takes tens of milliseconds that the build need not wait for.
            drop(stdin);
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Creates a network namespace, kept alive by a bind mount at `path` (as `ip netns add`):
/// a thread of its own unshares it, so no other thread of kiln changes namespace.
#[allow(unsafe_code)] // rustix marks unshare unsafe for CLONE_FILES, which is not used here.
fn create_namespace(path: &Path) -> Result<()> {
    File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| -> std::io::Result<()> {
                // SAFETY: only the network namespace is unshared, not the file table.
                unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }?;
                mount_bind("/proc/thread-self/ns/net", path)?;
                Ok(())
            })
            .join()
    });
    match made {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            let _ = fs::remove_file(path);
            Err(err).context("cannot create the step's network namespace")
        }
        Err(_) => bail!("creating the step's network namespace panicked"),
    }
}

/// Starts `slirp4netns` on the namespace at `path` and waits until it has brought up
/// loopback and `tap0` (10.0.2.100, gateway 10.0.2.2, DNS forwarder 10.0.2.3). Connections
/// to the host's loopback are refused; the rest leave through the host's sockets.
fn start_slirp(path: &Path) -> Result<(Child, ChildStdin)> {
    let mut child = Command::new(SLIRP)
        .args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--netns-type=path",
            // It exits when stdin reaches end of file, and reports on stdout once ready.
            "--exit-fd=0",
            "--ready-fd=1",
        ])
        .arg(path)
        .arg("tap0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "RUN's default network needs {SLIRP}, which is not installed \
                     (apt-get install {SLIRP}); or build with --network=none, or \
                     --network=host --allow network.host"
                )
            } else {
                anyhow::Error::new(err).context(format!("cannot start {SLIRP}"))
            }
        })?;
    let stdin = child.stdin.take().expect("piped stdin");
    let mut ready = [0u8; 1];
    let got = child
        .stdout
        .take()
        .expect("piped stdout")
        .read(&mut ready)
        .unwrap_or(0);
    if got == 0 {
        drop(stdin);
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let status = child.wait()?;
        bail!(
            "{SLIRP} could not set up the step's network ({status}): {}",
            stderr.trim()
        );
    }
    Ok((child, stdin))
}

/// The `/etc/resolv.conf` of a step with network `mode`, made from the host's (see
/// [`derive_resolv_conf`]).
pub fn resolv_conf(mode: NetworkMode) -> String {
    derive_resolv_conf(
        mode,
        &fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        || fs::read_to_string("/run/systemd/resolve/resolv.conf").ok(),
    )
}

/// A step's `resolv.conf` from the host's `main` one, as BuildKit makes it: a host whose
/// only resolver is systemd-resolved's stub (127.0.0.53) is read through `systemd`'s file
/// instead; outside the host's network, loopback resolvers are dropped, and docker's
/// public ones stand in when none is left.
fn derive_resolv_conf(
    mode: NetworkMode,
    main: &str,
    systemd: impl FnOnce() -> Option<String>,
) -> String {
    let mut conf = ResolvConf::parse(main);
    if mode != NetworkMode::Host
        && conf.nameservers == [IpAddr::from([127, 0, 0, 53])]
        && let Some(text) = systemd()
    {
        conf = ResolvConf::parse(&text);
    }
    if mode != NetworkMode::Host {
        conf.nameservers.retain(|addr| !addr.is_loopback());
    }
    if conf.nameservers.is_empty() {
        conf.nameservers = DEFAULT_NAMESERVERS
            .iter()
            .map(|addr| addr.parse().expect("a valid address"))
            .collect();
    }
    conf.to_string()
}

/// A parsed `resolv.conf`, as moby's resolvconf package reads one.
#[derive(Debug, Default, PartialEq)]
struct ResolvConf {
    nameservers: Vec<IpAddr>,
    /// The last `search` (or `domain`) line's domains.
    search: Vec<String>,
    options: Vec<String>,
    /// Lines of other directives, verbatim.
    other: Vec<String>,
}

impl ResolvConf {
    /// Reads `text`; comments, blank lines and nameservers that are no address are dropped.
    fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some((&directive, args)) = fields.split_first() else {
                continue;
            };
            match directive {
                "nameserver" => {
                    if let Some(Ok(addr)) = args.first().map(|a| a.parse()) {
                        conf.nameservers.push(addr);
                    }
                }
                "domain" | "search" if !args.is_empty() => {
                    conf.search = args.iter().map(|s| s.to_string()).collect();
                }
                "options" => conf.options.extend(args.iter().map(|s| s.to_string())),
                "domain" | "search" => {}
                _ => conf.other.push(line.to_string()),
            }
        }
        conf
    }
}

impl std::fmt::Display for ResolvConf {
    /// Nameservers, search domains, options, then the other lines, as moby writes them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for addr in &self.nameservers {
            writeln!(f, "nameserver {addr}")?;
        }
        if !self.search.is_empty() {
            writeln!(f, "search {}", self.search.join(" "))?;
        }
        if !self.options.is_empty() {
            writeln!(f, "options {}", self.options.join(" "))?;
        }
        for line in &self.other {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_read_and_written_as_moby_does() {
        let conf = ResolvConf::parse(
            "# generated\nnameserver 127.0.0.53\nnameserver bogus\n; note\n\
             domain old.example\nsearch a.example b.example\noptions ndots:2\n\
             options edns0\nsortlist 10.0.0.0\nnameserver fd00::1\n",
        );
        assert_eq!(
            conf.to_string(),
            "nameserver 127.0.0.53\nnameserver fd00::1\nsearch a.example b.example\n\
             options ndots:2 edns0\nsortlist 10.0.0.0\n"
        );
    }

    #[test]
    fn loopback_resolvers_are_replaced_outside_the_host_network() {
        let host = "nameserver 127.0.0.1\nnameserver 10.1.1.1\nsearch lan\n";
        let no_systemd = || None;
        assert_eq!(
            derive_resolv_conf(NetworkMode::Default, host, no_systemd),
            "nameserver 10.1.1.1\nsearch lan\n"
        );
        assert_eq!(
            derive_resolv_conf(NetworkMode::Host, host, no_systemd),
            "nameserver 127.0.0.1\nnameserver 10.1.1.1\nsearch lan\n"
        );
        assert_eq!(
            derive_resolv_conf(NetworkMode::None, "nameserver ::1\n", no_systemd),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n\
             nameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\n"
        );
    }

    #[test]
    fn systemd_resolved_stub_is_looked_through_except_on_the_host_network() {
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
        let upstream = || Some("nameserver 192.0.2.53\n".to_string());
        assert_eq!(
            derive_resolv_conf(NetworkMode::Default, stub, upstream),
            "nameserver 192.0.2.53\n"
        );
        assert_eq!(derive_resolv_conf(NetworkMode::Host, stub, upstream), stub);
    }
}
