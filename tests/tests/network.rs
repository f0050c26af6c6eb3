//! RUN's network, through the real binary under both runtimes: by default a namespace of
//! the step's own with outbound access (through slirp4netns) that cannot reach the host's
//! loopback, as docker's bridge; `--network=host` shares the host's. kiln runs inside a
//! network namespace the test builds (an address that is not
//! 127.0.0.1 stands for the outside world, and
//! a private `/etc/resolv.conf`), so no traffic leaves the machine.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_tests::{kiln_bin, run, state_with_busybox};

/// Fetches a page from "outside" (an address of the host that is not loopback), from the
/// host's loopback through slirp's gateway alias, and from the step's own loopback;
/// records the interfaces and resolv.conf the step sees.
const DOCKERFILE: &str = "\
FROM busybox:1
RUN mkdir /seen && awk -F: 'NR > 2 { gsub(/ /, \"\", $1); print $1 }' /proc/net/dev | sort > /seen/nets \\
    && cat /etc/resolv.conf > /seen/resolv \\
    && fetch() { printf 'GET /page HTTP/1.0\\r\\n\\r\\n' | nc -w 5 \"$1\" \"$2\" | tail -n 1 \\
                 | grep . || echo unreachable; } \\
    && fetch 198.18.0.1 8080 > /seen/outside && fetch 10.0.2.2 8081 > /seen/gateway \\
    && fetch 127.0.0.1 8081 > /seen/loopback
";

/// The host's resolv.conf inside the test's namespace: a loopback resolver (which a step
/// of its own network cannot use) and another.
const HOST_RESOLV_CONF: &str =
    "# the host's\nnameserver 127.0.0.1\nnameserver 198.18.0.53\nsearch corp.test\n";

/// Builds [`DOCKERFILE`] with `flags` in a fresh network and mount namespace that has
/// loopback, an address of the "outside" (198.18.0.1, on the loopback interface: it
/// needs no kernel module, and it is not the loopback address slirp refuses), web servers on 198.18.0.1:8080 and
/// 127.0.0.1:8081, and [`HOST_RESOLV_CONF`]; returns the directory the step's files went to.
fn build_in_a_namespace(flags: &[&str]) -> tempfile::TempDir {
    let root = state_with_busybox();
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("Dockerfile"), DOCKERFILE).unwrap();
    let www = tempfile::tempdir().unwrap();
    fs::write(www.path().join("page"), "served\n").unwrap();
    let resolv = www.path().join("resolv.conf");
    fs::write(&resolv, HOST_RESOLV_CONF).unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e
        mount --bind {resolv} /etc/resolv.conf
        ip link set lo up
        ip addr add 198.18.0.1/32 dev lo
        busybox httpd -f -p 198.18.0.1:8080 -h {www} >/dev/null 2>&1 & outside=$!
        busybox httpd -f -p 127.0.0.1:8081 -h {www} >/dev/null 2>&1 & loopback=$!
        trap 'kill $outside $loopback' EXIT
        \"$@\"",
        resolv = resolv.display(),
        www = www.path().display(),
    );
    let mut command = Command::new("unshare");
    command
        .args(["--net", "--mount", "--", "sh", "-c", &script, "sh"])
        .arg(kiln_bin())
        .arg("--root")
        .arg(root.path())
        .args(["build", "--progress", "plain"])
        .args(flags)
        .arg("-o")
        .arg(format!("type=local,dest={}", out.path().display()))
        .arg(context.path());
    run(&mut command, true);
    out
}

fn read(out: &Path, name: &str) -> String {
    fs::read_to_string(out.join("seen").join(name))
        .unwrap_or_else(|e| panic!("the step wrote no /seen/{name}: {e}"))
}

fn default_network_reaches_out_but_not_the_hosts_loopback(runtime: &[&str]) {
    let out = build_in_a_namespace(runtime);
    let out = out.path();
    assert_eq!(read(out, "nets"), "lo\ntap0\n");
    assert_eq!(read(out, "outside"), "served\n");
    assert_eq!(read(out, "gateway"), "unreachable\n");
    assert_eq!(read(out, "loopback"), "unreachable\n");
    // Loopback resolvers are dropped, as docker's and BuildKit's sandboxes do.
    assert_eq!(
        read(out, "resolv"),
        "nameserver 198.18.0.53\nsearch corp.test\n"
    );
}

#[test]
fn default_network_under_the_embedded_runtime() {
    default_network_reaches_out_but_not_the_hosts_loopback(&[]);
}

#[test]
fn default_network_under_runc() {
    default_network_reaches_out_but_not_the_hosts_loopback(&["--oci-runtime", "runc"]);
}

/// `--network=host` (granted) shares the host's interfaces, loopback services and
/// resolvers.
#[test]
fn host_network_shares_the_hosts_loopback() {
    let out = build_in_a_namespace(&["--network", "host", "--allow", "network.host"]);
    let out = out.path();
    assert_eq!(read(out, "nets"), "lo\n");
    assert_eq!(read(out, "outside"), "served\n");
    assert_eq!(read(out, "loopback"), "served\n");
    assert_eq!(
        read(out, "resolv"),
        "nameserver 127.0.0.1\nnameserver 198.18.0.53\nsearch corp.test\n"
    );
}
