//! The lab: a real Kubernetes cluster on one Linux machine, with no container engine and no cloud.
//!
//! Each lab node is what a node of a real cluster is, in namespaces instead of a machine:
//! - a **network namespace** `tabby-node-N` whose `eth0` sits on a Linux bridge, the node network
//!   192.168.100.0/24 (this machine is .1; nodes are .100, .101, …);
//! - a persistent **mount namespace** and **UTS namespace** (hostname `node-N`) in which the node's own
//!   directories (`/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/kubelet`, `/var/lib/containerd`, …) appear at their
//!   usual paths, `/run` is the node's own tmpfs, `/sys` shows the node's links, the cgroup hierarchies are
//!   mounted again, and the kernel settings a kubelet writes (`kernel.panic`, `vm.overcommit_memory`, …) are
//!   node files, so no node ever changes the machine;
//! - its own **cgroup root** under the lab's memory cgroup, so kubelets never see each other's pods;
//! - **containerd 2.x** (runc), the **kubelet** and **kube-proxy** (nftables mode), started in those
//!   namespaces and kept running by the lab.
//!
//! The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) runs in node-0's network
//! namespace, the lab's control-plane node, as on a kubeadm cluster: the API server reaches pods through the
//! pod network's routes (the proxy subresource, webhooks), and pods reach it through the `kubernetes` Service.
//! Images come from archives the lab's image builder writes (`cargo xtask images`), imported into every node's
//! containerd; a read-only registry mirror on this machine (192.168.100.1:5000) answers the pulls that
//! `imagePullPolicy: Always` makes for those same images. CoreDNS runs as a Deployment with the `kube-dns`
//! Service, as kubeadm installs it.

pub mod addons;
pub mod cgroups;
pub mod daemon;
pub mod node;
pub mod pki;
pub mod reference;
pub mod registry;
pub mod render;
pub mod sh;
pub mod suites;

use std::net::Ipv4Addr;

/// The bridge of the node network.
pub const BRIDGE: &str = "tabbylab0";
/// This machine's address on the node network: the nodes' default gateway and the registry mirror.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// Prefix length of the node network.
pub const PREFIX: u8 = 24;
/// The node network's IPv6 prefix in a dual-stack lab: this machine is `::1`, node N is `::(100+N)`.
pub const NODE_NET6: &str = "fd00:100::";
pub const PREFIX6: u8 = 64;
/// The dual-stack lab's IPv6 Service network.
pub const SERVICE_CIDR6: &str = "fd00:10:96::/112";
/// Where the registry mirror listens (on [`GATEWAY`]).
pub const REGISTRY_PORT: u16 = 5000;
/// The Service network, and the cluster DNS Service's address in it.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const CLUSTER_DNS: &str = "10.96.0.10";
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Where Debian's containernetworking-plugins installs the reference plugins (loopback, portmap, …): a node
/// has them in its CNI bin directory, as a node with that package installed does.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Name prefixes of what the lab creates on this machine (namespaces, links), for `down` after a crash.
pub const NETNS_PREFIX: &str = "tabby-node-";
pub const LINK_PREFIX: &str = "tlab";

/// The pod network the lab's nodes are set up for: what kube-proxy takes for pod traffic (which it leaves
/// unmasqueraded) depends on how the plugin wires pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodNetwork {
    /// Tabby: pods sit behind host veths named `tby…`.
    #[default]
    Tabby,
    /// Debian's reference plugins, bridge + host-local (a control for the conformance suites): pods sit on the
    /// bridge `cni0`, with a /24 of 10.244.0.0/16 per node.
    Reference,
}

impl PodNetwork {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tabby" => Some(PodNetwork::Tabby),
            "reference" => Some(PodNetwork::Reference),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PodNetwork::Tabby => "tabby",
            PodNetwork::Reference => "reference",
        }
    }
}
