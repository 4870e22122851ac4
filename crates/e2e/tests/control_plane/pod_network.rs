//! A pod network for the apply-as-shipped scenarios: a Linux bridge with the node's address
//! (`10.X.Y.1/24`) and, per pod, a network namespace joined to it by a veth pair, with the pod's
//! own address on its `eth0` and a default route through the bridge. Pods then bind
//! `0.0.0.0:6443` as the shipped manifests say, each in its own namespace, and their addresses are
//! not loopback ones, so kube-apiserver accepts them in EndpointSlices and the aggregator can route
//! to them (`--enable-aggregator-routing`). Needs root (`ip netns`, `ip link`), which these tests
//! already run as; every namespace and the bridge are deleted when dropped, and a run killed before
//! that leaves names carrying its pid, which the next run removes.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every bridge and namespace this harness creates (`wsb<pid>`, `wsp<pid>-<n>`).
const BRIDGE_PREFIX: &str = "wsb";
const NETNS_PREFIX: &str = "wsp";

/// Runs `ip ARGS`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e} (iproute2 is needed)"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of `ip ARGS` (empty when it fails).
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes bridges and namespaces left by runs whose process is gone.
fn remove_stale() {
    for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
        // "12: wsb1234: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        if let Some(pid) = name
            .strip_prefix(BRIDGE_PREFIX)
            .and_then(|p| p.parse().ok())
            && !alive(pid)
        {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
    for line in ip_output(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse().ok())
            && !alive(pid)
        {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The bridge and the addresses handed out on it.
pub(crate) struct PodNetwork {
    bridge: String,
    /// The first three octets of the /24.
    prefix: [u8; 3],
    next_host: Mutex<u8>,
}

/// One pod's network namespace; deleted (with its veth pair) when dropped.
pub(crate) struct PodNetns {
    /// `ip netns` name.
    pub name: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl PodNetwork {
    /// Creates the bridge on a /24 of 10.200.0.0/16–10.250.0.0/16 that no interface of this
    /// machine uses yet, with the node's address `.1`.
    pub(crate) fn create() -> Self {
        remove_stale();
        let pid = std::process::id();
        let bridge = format!("{BRIDGE_PREFIX}{pid}");
        let used = ip_output(&["-o", "-4", "addr", "show"]);
        let prefix = (0..51u32 * 256)
            .map(|i| (pid + i) % (51 * 256))
            .map(|i| [10, 200 + (i / 256) as u8, (i % 256) as u8])
            .find(|[a, b, c]| !used.contains(&format!(" {a}.{b}.{c}.")))
            .expect("a free /24 in 10.200.0.0–10.250.255.255");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let network = Self {
            bridge,
            prefix,
            next_host: Mutex::new(2),
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.node_ip()),
            "dev",
            &network.bridge,
        ]);
        ip(&["link", "set", &network.bridge, "up"]);
        network
    }

    /// The node's address on the bridge: where pods reach kube-apiserver.
    pub(crate) fn node_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A new network namespace with the next free address, joined to the bridge.
    pub(crate) fn add_pod(&self) -> PodNetns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let host = {
            let mut next = self.next_host.lock().expect("address counter");
            assert!(*next < 255, "pod network {}: out of addresses", self.bridge);
            *next += 1;
            *next - 1
        };
        let [a, b, c] = self.prefix;
        let address = Ipv4Addr::new(a, b, c, host);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns = PodNetns {
            name: format!("{NETNS_PREFIX}{pid}-{n}"),
            ip: address,
        };
        // Interface names are at most 15 bytes.
        let host_end = format!("wv{:x}-{n}", pid % 0xFFFF);
        ip(&["netns", "add", &netns.name]);
        ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ]);
        ip(&["link", "set", &host_end, "master", &self.bridge, "up"]);
        let ns = |args: &[&str]| {
            let mut all = vec!["-n", netns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        ns(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        ns(&["link", "set", "eth0", "up"]);
        ns(&["link", "set", "lo", "up"]);
        ns(&[
            "route",
            "add",
            "default",
            "via",
            &self.node_ip().to_string(),
        ]);
        netns
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
