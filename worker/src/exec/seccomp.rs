//! The seccomp filter of sandboxed RUN steps, as docker's default profile acts on a
//! container with docker's default capabilities: the system calls its documentation lists
//! as blocked (kernel modules, keyrings, clocks, mounts, new namespaces, BPF, perf, NUMA
//! policy, io_uring, …) fail with `EPERM`, `clone` may not make namespaces, `clone3`
//! reports `ENOSYS` so that libc falls back to `clone`, and vsock sockets are refused.
//! Creating a user namespace needs no capability, which is why the filter matters:
//! without it a step could `unshare -Urm` and reach kernel code meant for root.
//! Insecure steps (`--security=insecure`) get no filter, as `docker run --privileged`.

use anyhow::Result;
use oci_spec::runtime::LinuxSeccomp;
use serde_json::json;

/// Refused with `EPERM`.
const REFUSED: [&str; 58] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
];

/// `clone` flags that make a namespace: `CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`,
/// `NEWUSER`, `NEWPID`, `NEWNET`.
const NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const AF_VSOCK: u64 = 40;

/// The filter, for the ABIs of this machine's architecture (a 32-bit ABI left out would
/// be a way around it).
pub fn profile() -> Result<LinuxSeccomp> {
    let architectures: &[&str] = match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => &[],
    };
    let mut rules = vec![
        json!({ "names": REFUSED.as_slice(), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM }),
        json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }),
        json!({
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{ "index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_EQ" }],
        }),
    ];
    // One rule per flag: the rules of a system call are alternatives.
    for flag in NAMESPACE_FLAGS {
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{ "index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    Ok(serde_json::from_value(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": rules,
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_a_valid_runtime_spec_filter() {
        let profile = profile().unwrap();
        let text = serde_json::to_value(&profile).unwrap();
        assert_eq!(text["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = text["syscalls"].as_array().unwrap();
        assert!(
            rules[0]["names"]
                .as_array()
                .unwrap()
                .contains(&json!("unshare"))
        );
        assert_eq!(
            rules
                .iter()
                .filter(|r| r["names"] == json!(["clone"]))
                .count(),
            NAMESPACE_FLAGS.len()
        );
    }
}
