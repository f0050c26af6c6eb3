//! The OCI runtime spec of a RUN step, with Docker's defaults rather than
//! the runtime-spec's.

use anyhow::{Result, anyhow};
use kiln_solver::{NetworkMode, SecurityMode, Ulimit};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_maskedpaths, get_default_mounts,
    get_default_readonly_paths,
};
use std::collections::HashSet;
use std::path::Path;

use super::{ExecRequest, SANDBOX_HOSTNAME, SandboxMount};
use crate::rootfs::ExecUser;
use crate::secrets::StepSecret;

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
    network_namespace: Option<&Path>,
) -> Result<Spec> {
    let op = request.op;
    let secret_env = request.secrets.iter().filter_map(|secret| match secret {
        StepSecret::Env { name, value } => Some(format!("{name}={value}")),
        StepSecret::File { .. } => None,
    });
    let mut env: Vec<String> = op
        .env
        .iter()
        .chain(request.extra_env)
        .cloned()
        .chain(secret_env)
        .collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    // As runc sets it (both runtimes then agree): the user's home, or `/`.
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let capabilities: HashSet<Capability> = match op.security {
        SecurityMode::Sandbox => DEFAULT_CAPABILITIES.into_iter().collect(),
        SecurityMode::Insecure => all_capabilities(),
    };
    let mut process = ProcessBuilder::default()
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
        // No inheritable or ambient capabilities (the builder's default has three): a
        // step run as another user than root has none, as in docker.
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .build()?;
    // Unset rather than false (the same to runc): libcontainer loads the seccomp filter
    // while it still holds the capabilities to only when the field is absent.
    process.set_no_new_privileges(None);
    // As BuildKit: the step's --ulimits, else none set, so steps inherit kiln's limits
    // (not the runtime spec's default of 1024 open files).
    process.set_rlimits(if op.ulimits.is_empty() {
        None
    } else {
        Some(rlimits(&op.ulimits)?)
    });

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Ipc)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Uts)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
    ];
    // The default network's namespace is prepared beforehand (see `network`); `none`
    // gets an empty one from the runtime; `host` shares kiln's.
    let own_network = op.network != NetworkMode::Host;
    if own_network {
        let mut namespace = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = network_namespace {
            namespace = namespace.path(path);
        }
        namespaces.push(namespace.build()?);
    }

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
            // Bound by kiln itself (see `SandboxMount::Socket`).
            SandboxMount::Socket { .. } => continue,
        });
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(
            LinuxResourcesBuilder::default()
                .devices(device_rules(op.security)?)
                .build()?,
        )
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
    if op.security == SecurityMode::Sandbox {
        linux.set_seccomp(Some(super::seccomp::profile()?));
    }
    let mut spec = Spec::default();
    spec.set_process(Some(process))
        .set_hostname(Some(
            op.hostname
                .clone()
                .unwrap_or_else(|| SANDBOX_HOSTNAME.to_string()),
        ))
        .set_root(Some(
            RootBuilder::default()
                .path(request.rootfs)
                .readonly(false)
                .build()?,
        ))
        .set_mounts(Some(dedup_mounts(all_mounts)))
        .set_linux(Some(linux));
    Ok(spec)
}

/// Docker's device cgroup rules: deny every device, then allow creating device nodes
/// (opening one is what counts) and the few devices a container needs. Without a deny
/// rule a runtime leaves the devices cgroup open and a step could `mknod` and read the
/// host's disks. Insecure steps may open every device, as `docker run --privileged` and
/// BuildKit's `--security=insecure` allow.
fn device_rules(security: SecurityMode) -> Result<Vec<LinuxDeviceCgroup>> {
    use LinuxDeviceType::{A, B, C};
    let rule = |allow: bool,
                typ: LinuxDeviceType,
                major: Option<i64>,
                minor: Option<i64>,
                access: &str| {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(major) = major {
            rule = rule.major(major);
        }
        if let Some(minor) = minor {
            rule = rule.minor(minor);
        }
        rule.build()
    };
    if security == SecurityMode::Insecure {
        return Ok(vec![rule(true, A, None, None, "rwm")?]);
    }
    let char_device = |major: i64, minor: Option<i64>| rule(true, C, Some(major), minor, "rwm");
    Ok(vec![
        rule(false, A, None, None, "rwm")?,
        rule(true, C, None, None, "m")?,
        rule(true, B, None, None, "m")?,
        char_device(1, Some(3))?,    // /dev/null
        char_device(1, Some(5))?,    // /dev/zero
        char_device(1, Some(7))?,    // /dev/full
        char_device(1, Some(8))?,    // /dev/random
        char_device(1, Some(9))?,    // /dev/urandom
        char_device(5, Some(0))?,    // /dev/tty
        char_device(5, Some(1))?,    // /dev/console
        char_device(5, Some(2))?,    // /dev/ptmx
        char_device(136, None)?,     // /dev/pts/*
        char_device(10, Some(200))?, // /dev/net/tun
    ])
}

/// `--ulimit`s as the spec's rlimits: `RLIMIT_` + the name in upper case, -1 (unlimited)
/// as `RLIM_INFINITY` (all bits set), as BuildKit converts them.
fn rlimits(ulimits: &[Ulimit]) -> Result<Vec<PosixRlimit>> {
    ulimits
        .iter()
        .map(|ulimit| {
            let typ = format!("RLIMIT_{}", ulimit.name.to_ascii_uppercase())
                .parse::<PosixRlimitType>()
                .map_err(|_| anyhow!("unknown ulimit {:?}", ulimit.name))?;
            Ok(PosixRlimitBuilder::default()
                .typ(typ)
                .soft(ulimit.soft as u64)
                .hard(ulimit.hard as u64)
                .build()?)
        })
        .collect()
}

/// The mounts with each destination once: a later mount replaces an earlier one at its
/// place (BuildKit's `dedupMounts`), so that a step's `/dev/shm` replaces the default one.
fn dedup_mounts(mounts: Vec<Mount>) -> Vec<Mount> {
    let mut deduped: Vec<Mount> = Vec::with_capacity(mounts.len());
    for mount in mounts {
        match deduped
            .iter_mut()
            .find(|m| m.destination() == mount.destination())
        {
            Some(earlier) => *earlier = mount,
            None => deduped.push(mount),
        }
    }
    deduped
}

/// A bind mount of host path `source` at `target`, without setuid or devices.
pub(super) fn bind(target: &str, source: &str, readonly: bool) -> Result<Mount> {
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

/// Every capability this process holds (what BuildKit gives insecure steps): asking for
/// one the host withholds makes the runtime fail to start the container.
fn all_capabilities() -> HashSet<Capability> {
    use Capability::*;
    // In the kernel's bit order.
    const BY_BIT: [Capability; 41] = [
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ];
    let held = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .unwrap_or(0);
    BY_BIT
        .into_iter()
        .enumerate()
        .filter(|(bit, _)| held & (1 << bit) != 0)
        .map(|(_, capability)| capability)
        .collect()
}
