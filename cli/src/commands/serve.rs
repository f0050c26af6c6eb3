//! `kiln serve`: the build engine as a remote builder speaking BuildKit's API.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use kiln_api::server::{Address, Daemon, DaemonOptions, ListenOptions, serve};
use kiln_cache::StateDir;
use kiln_engine::Entitlement;
use kiln_registry::RegistryOptions;

use super::remote::TlsArgs;
use super::{Failure, block_on};

/// The default address: a root-owned unix socket.
pub const DEFAULT_ADDRESS: &str = "unix:///run/kiln/kiln.sock";

/// Arguments of `kiln serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Listen here: `unix:///PATH` or `tcp://HOST:PORT` (loopback only without
    /// authentication); repeatable.
    #[arg(long = "addr", default_value = DEFAULT_ADDRESS)]
    addresses: Vec<Address>,
    /// The group (name or number) that may use the unix sockets besides root.
    #[arg(long)]
    group: Option<String>,
    /// Let builds be granted this entitlement when they ask (`network.host`,
    /// `security.insecure`); repeatable.
    #[arg(long = "allow-insecure-entitlement")]
    allowed: Vec<Entitlement>,
    /// An OCI runtime binary with runc's command line for RUN steps instead of the
    /// embedded runtime.
    #[arg(long, value_name = "PATH")]
    oci_runtime: Option<PathBuf>,
    /// The daemon's side of mutual TLS on TCP: clients must present certificates that
    /// this CA signed.
    #[command(flatten)]
    tls: TlsArgs,
    /// Listen on a non-loopback TCP address without authentication. Anyone who reaches
    /// it can run builds as root on this machine.
    #[arg(long)]
    insecure_tcp_without_auth: bool,
}

/// `kiln serve`.
pub fn run(state: &StateDir, registry: &RegistryOptions, args: ServeArgs) -> Result<(), Failure> {
    let group = args.group.as_deref().map(group_id).transpose()?;
    let daemon = Arc::new(Daemon::new(
        state.clone(),
        DaemonOptions {
            allowed: args.allowed.into_iter().collect(),
            oci_runtime: args.oci_runtime,
            registry: registry.clone(),
        },
    ));
    let listen = ListenOptions {
        addresses: args.addresses,
        group,
        insecure_tcp: args.insecure_tcp_without_auth,
        tls: args.tls.files(),
    };
    block_on(serve(daemon, listen))
}

/// A group's ID from its name (looked up in `/etc/group`) or number.
fn group_id(group: &str) -> Result<u32, Failure> {
    if let Ok(id) = group.parse() {
        return Ok(id);
    }
    std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1).and_then(|id| id.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| Failure::msg(format!("no group named {group:?}")))
}
