//! The lab: Tabby on a local multi-node cluster, on one Linux machine, with no container engine.
//!
//! Each lab node is a network namespace joined to a Linux bridge (the node network 192.168.100.0/24,
//! gateway .1 on this machine, nodes .100, .101, …) plus its own directories for what a node keeps on disk
//! (/etc/cni/net.d, /opt/cni/bin, /var/lib/tabby, /var/run/tabby, /var/log/tabby), which every process of
//! that node sees at the usual paths through bind mounts in its own mount namespace.
//!
//! The **node runner** ([`runner`]) is test infrastructure standing in for a kubelet and container runtime
//! until a real one runs in the lab: it runs the containers of host-network pods bound to its node (the
//! tabby-node DaemonSet's init containers, then its agent; the operator) as processes with their command,
//! args, env and hostPath volumes, restarts them by the pod's restart policy and reports their status;
//! every other pod is a network namespace wired by running the installed CNI plugin exactly as a container
//! runtime does ([`cni`]). Containers of ordinary pods are not run: a pod is its network namespace.

pub mod cni;
pub mod daemon;
pub mod runner;
pub mod sh;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The bridge of the node network.
pub const BRIDGE: &str = "tabbylab0";
/// The gateway address on this machine (also where kube-apiserver listens for the lab).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// Prefix length of the node network.
pub const PREFIX: u8 = 24;
/// Node directories every lab node has its own copy of, at these paths.
pub const NODE_DIRS: &[&str] =
    &["/etc/cni/net.d", "/opt/cni/bin", "/var/lib/tabby", "/var/run/tabby", "/var/log/tabby"];

/// One lab node.
#[derive(Clone, Debug)]
pub struct LabNode {
    pub name: String,
    pub index: usize,
    /// Network namespace name.
    pub netns: String,
    pub address: Ipv4Addr,
    /// The node's root: node directory `/x` is `<root>/x`.
    pub root: PathBuf,
}

impl LabNode {
    pub fn new(state: &Path, index: usize) -> LabNode {
        let name = format!("node-{index}");
        LabNode {
            netns: format!("tabby-{name}"),
            address: Ipv4Addr::new(192, 168, 100, 100 + index as u8),
            root: state.join("nodes").join(&name),
            name,
            index,
        }
    }

    /// Where host path `path` of this node lives on this machine.
    pub fn host_path(&self, path: &str) -> PathBuf {
        if SHARED_HOST_PATHS.iter().any(|p| path == *p || path.starts_with(&format!("{p}/"))) {
            PathBuf::from(path)
        } else {
            self.root.join(path.trim_start_matches('/'))
        }
    }

    /// The bind mounts that make this node's directories appear at their usual paths.
    pub fn node_binds(&self) -> Vec<sh::Bind> {
        NODE_DIRS
            .iter()
            .map(|d| sh::Bind {
                source: self.host_path(d).display().to_string(),
                target: d.to_string(),
                read_only: false,
            })
            .collect()
    }

    fn veth(&self) -> String {
        format!("tlab{}", self.index)
    }

    /// Creates the namespace, its link to the bridge and its directories.
    pub fn create(&self, reference_plugins: &Path) -> Result<(), String> {
        sh::ip(&["netns", "add", &self.netns])?;
        let veth = self.veth();
        sh::ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &self.netns])?;
        sh::ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
        let addr = format!("{}/{PREFIX}", self.address);
        let gw = GATEWAY.to_string();
        for args in [
            &["addr", "add", addr.as_str(), "dev", "eth0"][..],
            &["link", "set", "eth0", "up"],
            &["link", "set", "lo", "up"],
            &["route", "add", "default", "via", gw.as_str()],
        ] {
            let mut full = vec!["-n", self.netns.as_str()];
            full.extend_from_slice(args);
            sh::ip(&full)?;
        }
        sh::run("ip", &["netns", "exec", &self.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for d in NODE_DIRS {
            std::fs::create_dir_all(self.host_path(d)).map_err(|e| format!("{d}: {e}"))?;
        }
        // A node with containernetworking-plugins installed: the reference plugins (portmap, loopback…)
        // are in its CNI bin dir, where install-cni adds tabby.
        if let Ok(entries) = std::fs::read_dir(reference_plugins) {
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), self.host_path("/opt/cni/bin").join(entry.file_name()));
            }
        }
        Ok(())
    }

    /// Removes the namespace (and so its end of the veth) and the host end.
    pub fn destroy(&self) {
        let _ = sh::ip(&["link", "del", &self.veth()]);
        let _ = sh::ip(&["netns", "del", &self.netns]);
    }
}

/// Host paths every lab node shares with this machine instead of getting its own copy.
pub const SHARED_HOST_PATHS: &[&str] = &["/lib/modules", "/run/xtables.lock", "/sys", "/proc", "/dev"];

/// Creates the bridge with the gateway address; traffic from the node network to elsewhere is masqueraded
/// by nothing here (the lab has no uplink), and forwarding between nodes stays on the bridge.
pub fn create_bridge() -> Result<(), String> {
    sh::ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    sh::ip(&["addr", "add", &format!("{GATEWAY}/{PREFIX}"), "dev", BRIDGE])?;
    sh::ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

pub fn destroy_bridge() {
    let _ = sh::ip(&["link", "del", BRIDGE]);
}

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
