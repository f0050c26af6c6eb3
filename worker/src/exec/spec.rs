//! The OCI runtime spec of a RUN step, with Docker's defaults rather than
//! the runtime-spec's.

use anyhow::Result;
use kiln_solver::{NetworkMode, SecurityMode};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_maskedpaths,
    get_default_mounts, get_default_readonly_paths,
};
use std::collections::HashSet;

use super::{ExecRequest, SANDBOX_HOSTNAME, SandboxMount};
use crate::rootfs::ExecUser;

/// `PATH` when the image and the step set none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's 14 default capabilities.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Builds the `config.json` for `request`.
pub fn build(
    request: &ExecRequest<'_>,
    user: &ExecUser,
    cwd: &str,
    mounts: &[SandboxMount],
) -> Result<Spec> {
    let op = request.op;
    let mut env: Vec<String> = op.env.iter().chain(request.extra_env).cloned().collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    let capabilities: HashSet<Capability> = match op.security {
        SecurityMode::Sandbox => DEFAULT_CAPABILITIES.into_iter().collect(),
        SecurityMode::Insecure => all_capabilities(),
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(op.args.clone())
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(user.ids.uid)
                .gid(user.ids.gid)
                .additional_gids(user.additional_gids.clone())
                .build()?,
        )
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                .build()?,
        )
        .no_new_privileges(false)
        .build()?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    let own_network = op.network == NetworkMode::None;
    if own_network {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()?;

    let mut all_mounts: Vec<Mount> = get_default_mounts()
        .into_iter()
        .filter(|m| {
            let dest = m.destination().to_string_lossy();
            // sysfs can only be mounted in a network namespace of our own;
            // cgroup views are not needed to build.
            dest != "/sys/fs/cgroup" && (own_network || dest != "/sys")
        })
        .collect();
    if !own_network {
        all_mounts.push(bind("/sys", "/sys", true)?);
    }
    for mount in mounts {
        all_mounts.push(match mount {
            SandboxMount::Bind {
                target,
                source,
                readonly,
            } => bind(target, &source.to_string_lossy(), *readonly)?,
            SandboxMount::Tmpfs { target, size } => {
                let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                if *size > 0 {
                    options.push(format!("size={size}"));
                }
                MountBuilder::default()
                    .destination(target)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(options)
                    .build()?
            }
        });
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(if op.security == SecurityMode::Insecure {
            vec![]
        } else {
            get_default_maskedpaths()
        })
        .readonly_paths(if op.security == SecurityMode::Insecure {
            vec![]
        } else {
            get_default_readonly_paths()
        })
        .build()?;
    let mut spec = Spec::default();
    spec.set_process(Some(process))
        .set_hostname(Some(SANDBOX_HOSTNAME.to_string()))
        .set_root(Some(
            RootBuilder::default()
                .path(request.rootfs)
                .readonly(false)
                .build()?,
        ))
        .set_mounts(Some(all_mounts))
        .set_linux(Some(linux));
    Ok(spec)
}

fn bind(target: &str, source: &str, readonly: bool) -> Result<Mount> {
    let mut options = vec![
        "rbind".to_string(),
        "nosuid".to_string(),
        "nodev".to_string(),
    ];
    if readonly {
        options.push("ro".to_string());
    }
    Ok(MountBuilder::default()
        .destination(target)
        .typ("bind")
        .source(source)
        .options(options)
        .build()?)
}

fn all_capabilities() -> HashSet<Capability> {
    use Capability::*;
    [
        AuditControl,
        AuditRead,
        AuditWrite,
        BlockSuspend,
        Bpf,
        CheckpointRestore,
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        IpcLock,
        IpcOwner,
        Kill,
        Lease,
        LinuxImmutable,
        MacAdmin,
        MacOverride,
        Mknod,
        NetAdmin,
        NetBindService,
        NetBroadcast,
        NetRaw,
        Perfmon,
        Setgid,
        Setfcap,
        Setpcap,
        Setuid,
        SysAdmin,
        SysBoot,
        SysChroot,
        SysModule,
        SysNice,
        SysPacct,
        SysPtrace,
        SysRawio,
        SysResource,
        SysTime,
        SysTtyConfig,
        Syslog,
        WakeAlarm,
    ]
    .into_iter()
    .collect()
}
