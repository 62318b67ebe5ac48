//! `Installation` (`operator.tabby.dev/v1`): the one object a user writes to describe the pod network.
//!
//! It follows Tigera's `operator.tigera.io/v1` Installation wherever the concept is the same, so
//! `custom-resources.yaml` reads the same to people who installed Calico. Unset fields mean "the default";
//! the operator never writes defaults back into `spec`; it reports the effective spec in `status.computed`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// Desired state of the Tabby pod network on this cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "operator.tabby.dev",
    version = "v1",
    kind = "Installation",
    status = "InstallationStatus",
    doc = "Installation configures the Tabby pod network. Exactly one, named `default`, exists per cluster.",
    validation = Rule::new("self.metadata.name == 'default'").message("metadata.name: the Installation must be named 'default'"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the network is ready"),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.nodes.ready", description = "Nodes whose agent is ready"),
    printcolumn(name = "MTU", type_ = "integer", json_path = ".status.mtu", description = "Pod interface MTU"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp", description = "Age")
)]
#[serde(rename_all = "camelCase")]
pub struct InstallationSpec {
    /// Container registry to pull Tabby's images from, e.g. `registry.example.com/`. Unset: the image's own registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Secrets used to pull Tabby's images; they must exist in the `tabby-operator` namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// The pod network: IP pools, BGP, MTU, node address detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Where the CNI plugin and its configuration are installed on each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniSpec>,
    /// How the node agent DaemonSet is updated when its configuration changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_update_strategy: Option<NodeUpdateStrategy>,
    /// Overrides applied last to the node agent DaemonSet: env, resources, tolerations, nodeSelector, image, probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_daemon_set: Option<AgentDaemonSet>,
    /// Log levels of the node agent and CNI plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
}

/// The pod network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Whether nodes share routes over BGP. Enabled (default) or Disabled; pools with encapsulation None or IPIP need it.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "bgp")]
    pub bgp: Option<EnabledDisabled>,
    /// IP pools the operator creates and keeps in sync. Unset: one default IPv4 pool 192.168.0.0/16.
    /// An empty list: the operator manages no pools (create IPPool objects yourself). At most 25.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ipPools")]
    #[schemars(length(max = 25))]
    #[x_kube(validation = Rule::new("self.all(p, !has(p.name) || self.exists_one(q, has(q.name) && q.name == p.name))").message("spec.network.ipPools: pool names must be unique").reason(Reason::FieldValueDuplicate))]
    pub ip_pools: Option<Vec<InstallationIPPool>>,
    /// MTU of pod interfaces. Unset: detected per node from the underlay, minus encapsulation overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<i32>,
    /// How each node finds its IPv4 address. Unset: firstFound.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "nodeAddressAutodetectionV4")]
    pub node_address_autodetection_v4: Option<NodeAddressAutodetection>,
    /// How each node finds its IPv6 address. Unset: IPv6 is detected only when an IPv6 pool exists.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "nodeAddressAutodetectionV6")]
    pub node_address_autodetection_v6: Option<NodeAddressAutodetection>,
    /// The data plane that programs NAT (and later policy). Only Nftables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_dataplane: Option<LinuxDataplane>,
    /// Whether pods may use hostPort (chains the portmap CNI plugin). Enabled (default) or Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ports: Option<EnabledDisabled>,
}

/// A switch.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnabledDisabled {
    Enabled,
    Disabled,
}

/// The Linux data plane.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinuxDataplane {
    /// nftables (table `tabby`).
    #[default]
    Nftables,
}

/// How traffic between nodes is carried.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encapsulation {
    /// Native routing: routes to other nodes' blocks are shared over BGP.
    None,
    /// VXLAN to every other node.
    #[serde(rename = "VXLAN")]
    Vxlan,
    /// VXLAN only to nodes in another subnet; native routing inside the subnet.
    #[serde(rename = "VXLANCrossSubnet")]
    VxlanCrossSubnet,
    /// IP-in-IP to every other node (IPv4 only; needs BGP).
    #[serde(rename = "IPIP")]
    Ipip,
    /// IP-in-IP only to nodes in another subnet (IPv4 only; needs BGP).
    #[serde(rename = "IPIPCrossSubnet")]
    IpipCrossSubnet,
}

/// A pool the operator creates as an IPPool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.blockSize) || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))").message("blockSize: must be 20-32 for an IPv4 pool or 116-128 for an IPv6 pool").field_path(".blockSize"))]
#[x_kube(validation = Rule::new("!has(self.blockSize) || !isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()").message("blockSize: a block cannot be larger than its pool's cidr").field_path(".blockSize"))]
#[x_kube(validation = Rule::new("!has(self.encapsulation) || !isCIDR(self.cidr) || cidr(self.cidr).ip().family() == 4 || !self.encapsulation.startsWith('IPIP')").message("encapsulation: IPIP is IPv4 only").field_path(".encapsulation"))]
pub struct InstallationIPPool {
    /// Name of the IPPool object. Unset: derived from the cidr (e.g. `default-ipv4-ippool` for the first IPv4 pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// The pool's range in CIDR notation, e.g. 10.244.0.0/16 or fd00:10:244::/48.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr: must be a CIDR such as 10.244.0.0/16"))]
    #[x_kube(validation = Rule::new("!isCIDR(self) || cidr(self).masked() == cidr(self)").message("cidr: host bits must be zero (use the network address)"))]
    pub cidr: String,
    /// How traffic to other nodes is carried. Default None (native routing over BGP); VXLAN when bgp is Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encapsulation: Option<Encapsulation>,
    /// Whether pod traffic leaving all pools is masqueraded to the node address. Default Enabled for IPv4, Disabled for IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<EnabledDisabled>,
    /// Selects the nodes that may allocate from this pool, e.g. `all()` (default) or `zone == 'a'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub node_selector: Option<String>,
    /// Prefix length of the per-node blocks. Default 26 (IPv4) or 122 (IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i32>,
    /// Whether this pool's routes are kept out of BGP advertisements to external peers.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "disableBGPExport")]
    pub disable_bgp_export: Option<bool>,
}

/// How a node finds its own address. Exactly one method may be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.firstFound), has(self.kubernetes), has(self.interface), has(self.skipInterface), has(self.canReach), has(self.cidrs)].exists_one(x, x)").message("nodeAddressAutodetection: set exactly one of firstFound, kubernetes, interface, skipInterface, canReach, cidrs"))]
pub struct NodeAddressAutodetection {
    /// Use the first address of the first usable interface (skips loopback, docker and Tabby's own devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_found: Option<bool>,
    /// Use the address Kubernetes reports for the Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAutodetectionMethod>,
    /// Use the first address of the first interface whose name matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Like firstFound, skipping interfaces whose name matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_interface: Option<String>,
    /// Use the source address the node's routing table picks to reach this address or hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_reach: Option<String>,
    /// Use the first address inside one of these CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("cidrs: every entry must be a CIDR"))]
    pub cidrs: Option<Vec<String>>,
}

/// Which Node address Kubernetes-based detection uses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubernetesAutodetectionMethod {
    /// The Node's InternalIP.
    NodeInternalIP,
}

/// Where the CNI plugin lives on each node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CniSpec {
    /// Directory of CNI plugin binaries on the node. Default /opt/cni/bin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("cni.binDir: must be an absolute path"))]
    pub bin_dir: Option<String>,
    /// Directory of CNI network configurations on the node. Default /etc/cni/net.d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("cni.confDir: must be an absolute path"))]
    pub conf_dir: Option<String>,
}

/// How the agent DaemonSet is rolled. Only RollingUpdate is supported (as in Calico).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeUpdateStrategy {
    /// Update strategy type: RollingUpdate.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub type_: Option<UpdateStrategyType>,
    /// Rolling update parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// The only supported update strategy type.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategyType {
    /// Replace agent pods a few nodes at a time.
    #[default]
    RollingUpdate,
}

/// Rolling update parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// How many nodes may be without a ready agent during an update: a number or a percentage. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// User overrides for the node agent DaemonSet, applied after everything the operator renders.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentDaemonSet {
    /// Extra environment variables for the agent container; a variable of the same name replaces the rendered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Resource requests and limits of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Tolerations of the agent pods. Unset: tolerate every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Extra node labels the agent pods require (added to kubernetes.io/os: linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Full image reference of the agent (and its install-cni init container); replaces registry and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Probe timings of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<AgentProbes>,
}

/// Probe timings of the agent container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentProbes {
    /// Liveness probe timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeTimings>,
    /// Readiness probe timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeTimings>,
    /// Startup probe timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeTimings>,
}

/// Timings of one probe; unset fields keep the rendered value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTimings {
    /// Seconds after the container starts before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds after which a probe times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures before the probe counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<i32>,
}

/// Log levels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// Log level of the agent and the CNI plugin. Default Info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<LogSeverity>,
}

/// A log level.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogSeverity {
    Error,
    Warning,
    #[default]
    Info,
    Debug,
}

/// Observed state of the network, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstallationStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded, as in TabbyStatus (Available is called Ready here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The effective spec: the user's spec with every default filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed: Option<InstallationSpec>,
    /// The pod interface MTU in effect (the smallest across nodes when detected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// Node agent counts from the DaemonSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
    /// Version of Tabby that is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// How many nodes should run the agent, and how many do with a ready agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes that should run the agent.
    pub desired: i32,
    /// Nodes whose agent is ready.
    pub ready: i32,
}
