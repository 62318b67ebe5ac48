//! The configuration files of a lab node, as pure functions of what the node is (tested without a machine).
//!
//! Every file uses the standard paths (`/run/containerd/containerd.sock`, `/etc/cni/net.d`, `/var/lib/kubelet`,
//! …): they are the node's own through its mount namespace. What differs from a production node is said where
//! it is set, and gathered in docs/lab.md.

use std::net::Ipv4Addr;

use super::{CLUSTER_DNS, CLUSTER_DOMAIN, GATEWAY, PodNetwork, REGISTRY_PORT};

/// What a node's configuration depends on.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub name: String,
    pub address: Ipv4Addr,
    /// The node's cgroup root (the kubelet's `cgroupRoot`).
    pub cgroup_root: String,
    /// `https://<address>:<port>` of the API server.
    pub server: String,
    /// The sandbox (pause) image reference, as imported.
    pub pause_image: String,
    /// How pods are wired (kube-proxy's notion of pod traffic).
    pub pod_network: PodNetwork,
}

/// The node's paths for the files below.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const KUBELET_CONFIG: &str = "/etc/kubernetes/kubelet-config.yaml";
pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
pub const PROXY_CONFIG: &str = "/etc/kubernetes/kube-proxy-config.yaml";
pub const PROXY_KUBECONFIG: &str = "/etc/kubernetes/kube-proxy.conf";
pub const CLUSTER_CA: &str = "/etc/kubernetes/pki/ca.crt";
pub const KUBELET_CLIENT_CA: &str = "/etc/kubernetes/pki/kubelet-client-ca.crt";
pub const RESOLV_CONF: &str = "/etc/kubernetes/resolv.conf";

/// containerd 2.x (config version 3): the CRI plugin with runc through cgroupfs, the lab's pause image, the
/// CNI directories, and registry hosts from [`CONTAINERD_HOSTS_DIR`].
pub fn containerd_config(node: &NodeFacts) -> String {
    format!(
        r#"# containerd on lab node {name} (written by tabby-lab)
version = 3
root = '/var/lib/containerd'
state = '/run/containerd'

[grpc]
  address = '{CONTAINERD_SOCKET}'

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{pause}'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '{CONTAINERD_HOSTS_DIR}'

[plugins.'io.containerd.cri.v1.runtime']
  # The lab runs without CAP_SYS_RESOURCE, so a negative oom_score_adj (what the CRI gives sandboxes) would
  # fail: containerd clamps it to its own instead.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      # No systemd here: the kubelet and runc use cgroupfs.
      SystemdCgroup = false
      BinaryName = '/usr/sbin/runc'
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/opt/cni/bin']
    conf_dir = '/etc/cni/net.d'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
"#,
        name = node.name,
        pause = node.pause_image,
    )
}

/// `hosts.toml` for every registry (`_default`): resolve and pull through the lab's mirror first. Nothing else
/// is reachable, so an image the mirror does not have fails to pull, as it would offline.
pub fn registry_hosts() -> String {
    format!(
        r#"# Every registry: the lab's read-only mirror of the images the lab built (written by tabby-lab)
[host."http://{GATEWAY}:{REGISTRY_PORT}"]
  capabilities = ["pull", "resolve"]
"#
    )
}

/// The kubelet's configuration file.
pub fn kubelet_config(node: &NodeFacts) -> String {
    format!(
        r#"# kubelet on lab node {name} (written by tabby-lab)
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{CONTAINERD_SOCKET}
# No systemd on this machine, and it runs cgroup v1: both are allowed with these settings.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: true
# The node's own cgroup root: kubelets sharing one would remove each other's pods.
cgroupRoot: {cgroup_root}
enforceNodeAllocatable: ["pods"]
# The kernel settings the kubelet writes are the node's own files (its mount namespace), not the machine's.
protectKernelDefaults: false
failSwapOn: false
address: {address}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# exec, logs, port-forward and attach: the API server authenticates with a client certificate of the
# lab's CA; everything else is checked with the API server (TokenReview, SubjectAccessReview), as kubeadm does.
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {KUBELET_CLIENT_CA}}}
authorization: {{mode: Webhook}}
rotateCertificates: false
serverTLSBootstrap: false
clusterDNS: [{CLUSTER_DNS}]
clusterDomain: {CLUSTER_DOMAIN}
resolvConf: {RESOLV_CONF}
# Nothing can be pulled again: never garbage-collect images. Evict only when really out of space: the nodes
# share this machine's disk with the builds, and a percentage of a large shared disk is gigabytes.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "200Mi", imagefs.available: "200Mi", nodefs.inodesFree: "1%"}}
serializeImagePulls: false
maxPods: 110
"#,
        name = node.name,
        cgroup_root = node.cgroup_root,
        address = node.address,
    )
}

/// kube-proxy's configuration file: nftables mode; traffic from pods is recognised by Tabby's interface prefix
/// (or, for the reference plugins, by their bridge).
pub fn proxy_config(node: &NodeFacts) -> String {
    let detect_local = match node.pod_network {
        PodNetwork::Tabby => format!(
            "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {{interfaceNamePrefix: {}}}",
            tabby_veth_prefix()
        ),
        PodNetwork::Reference => "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cni0}".to_string(),
    };
    format!(
        r#"# kube-proxy on lab node {name} (written by tabby-lab)
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {PROXY_KUBECONFIG}}}
hostnameOverride: {name}
bindAddress: {address}
mode: nftables
{detect_local}
# nf_conntrack_max is global and not writable from a network namespace: leave it as the machine has it.
conntrack: {{maxPerCore: 0}}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
nodePortAddresses: [primary]
"#,
        name = node.name,
        address = node.address,
    )
}

/// The interface prefix of Tabby's host-side veths (the CNI plugin names them `tby` + 12 hex).
pub fn tabby_veth_prefix() -> &'static str {
    "tby"
}

/// A kubeconfig with a bearer token.
pub fn kubeconfig(server: &str, ca_path: &str, user: &str, token: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: tabby-lab
  cluster:
    server: {server}
    certificate-authority: {ca_path}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: tabby-lab
  context: {{cluster: tabby-lab, user: {user}}}
current-context: tabby-lab
"#
    )
}

/// The resolver configuration the kubelet gives pods with `dnsPolicy: Default` (and CoreDNS as its upstream):
/// this machine's address on the node network, where nothing answers. The lab has no uplink, so names
/// outside the cluster fail fast instead of timing out on an unreachable resolver.
pub fn resolv_conf() -> String {
    format!("nameserver {GATEWAY}\noptions timeout:1 attempts:1\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeFacts {
        NodeFacts {
            name: "node-1".into(),
            address: Ipv4Addr::new(192, 168, 100, 101),
            cgroup_root: "/sandbox/tabby-lab/node-1".into(),
            server: "https://192.168.100.100:6443".into(),
            pause_image: "registry.k8s.io/pause:3.10.2".into(),
            pod_network: PodNetwork::Tabby,
        }
    }

    #[test]
    fn containerd_uses_cgroupfs_the_lab_pause_image_and_the_mirror() {
        let c = containerd_config(&node());
        assert!(c.contains("version = 3"));
        assert!(c.contains("sandbox = 'registry.k8s.io/pause:3.10.2'"));
        assert!(c.contains("SystemdCgroup = false"));
        assert!(c.contains("restrict_oom_score_adj = true"));
        assert!(c.contains("config_path = '/etc/containerd/certs.d'"));
        assert!(registry_hosts().contains("[host.\"http://192.168.100.1:5000\"]"));
    }

    #[test]
    fn the_kubelet_has_its_own_cgroup_root_and_checks_callers_with_the_api_server() {
        let k = kubelet_config(&node());
        assert!(k.contains("cgroupRoot: /sandbox/tabby-lab/node-1\n"));
        assert!(k.contains("failCgroupV1: false"));
        assert!(k.contains("address: 192.168.100.101\n"));
        assert!(k.contains("authorization: {mode: Webhook}"));
        assert!(k.contains("clusterDNS: [10.96.0.10]"));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&k).expect("valid YAML");
        assert_eq!(yaml["authentication"]["x509"]["clientCAFile"], KUBELET_CLIENT_CA);
        assert_eq!(yaml["evictionHard"]["nodefs.available"], "200Mi");
    }

    #[test]
    fn kube_proxy_runs_nftables_on_the_node_address() {
        let p = proxy_config(&node());
        let yaml: serde_yaml::Value = serde_yaml::from_str(&p).expect("valid YAML");
        assert_eq!(yaml["mode"], "nftables");
        assert_eq!(yaml["hostnameOverride"], "node-1");
        assert_eq!(yaml["bindAddress"], "192.168.100.101");
        assert_eq!(yaml["detectLocal"]["interfaceNamePrefix"], "tby");
        assert_eq!(yaml["conntrack"]["maxPerCore"], 0);
        let reference = proxy_config(&NodeFacts { pod_network: PodNetwork::Reference, ..node() });
        let yaml: serde_yaml::Value = serde_yaml::from_str(&reference).expect("valid YAML");
        assert_eq!(yaml["detectLocalMode"], "BridgeInterface");
        assert_eq!(yaml["detectLocal"]["bridgeInterface"], "cni0");
    }

    #[test]
    fn kubeconfigs_parse() {
        let k = kubeconfig("https://192.168.100.100:6443", CLUSTER_CA, "system:node:node-1", "t0k");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&k).expect("valid YAML");
        assert_eq!(yaml["users"][0]["user"]["token"], "t0k");
        assert_eq!(yaml["clusters"][0]["cluster"]["server"], "https://192.168.100.100:6443");
    }
}
