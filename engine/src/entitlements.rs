//! Entitlements: the privileges a build must be granted before a step may use them
//! (`--allow network.host`, `--allow security.insecure`), as in BuildKit.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use kiln_solver::{Definition, NetworkMode, Op, SecurityMode};

use crate::BuildError;

/// A privilege a step may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    /// `RUN --network=host`: the host's network namespace.
    NetworkHost,
    /// `RUN --security=insecure`: every capability and device, no confinement.
    SecurityInsecure,
}

impl Entitlement {
    /// BuildKit's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }
}

impl fmt::Display for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Entitlement {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "network.host" => Ok(Entitlement::NetworkHost),
            "security.insecure" => Ok(Entitlement::SecurityInsecure),
            other => Err(format!(
                "unknown entitlement {other:?} (network.host, security.insecure)"
            )),
        }
    }
}

/// Checks that every step of `definition` needs only `granted` entitlements; the first
/// step that needs more is the error, pointing at its Dockerfile line.
pub(crate) fn check(
    definition: &Definition,
    granted: &BTreeSet<Entitlement>,
) -> Result<(), BuildError> {
    for digest in definition.topological_order() {
        let Some(Op::Exec(exec)) = definition.vertex(digest).map(|v| &v.op) else {
            continue;
        };
        let needed = [
            (exec.network == NetworkMode::Host).then_some(Entitlement::NetworkHost),
            (exec.security == SecurityMode::Insecure).then_some(Entitlement::SecurityInsecure),
        ];
        if let Some(missing) = needed.into_iter().flatten().find(|e| !granted.contains(e)) {
            let meta = definition.meta(digest);
            return Err(BuildError::Step {
                description: meta.map(|m| m.description.clone()).unwrap_or_default(),
                location: meta.and_then(|m| m.location),
                error: anyhow::anyhow!("{missing} is not allowed: grant it with --allow {missing}"),
            });
        }
    }
    Ok(())
}
