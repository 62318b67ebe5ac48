//! BGP configuration (`tabby.dev/v1`): [`BGPConfiguration`] (the cluster's AS and mesh settings, a
//! singleton named `default`) and [`BGPPeer`] (extra sessions to routers or other nodes), with Calico v3's
//! field names.

use k8s_openapi::api::core::v1::SecretKeySelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The private AS number nodes use when BGPConfiguration does not say.
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// The TCP port BGP listens on when BGPConfiguration does not say.
pub const DEFAULT_LISTEN_PORT: u16 = 179;
/// How long mesh peers keep our routes while we restart, when BGPConfiguration does not say.
pub const DEFAULT_MESH_MAX_RESTART_TIME: &str = "120s";

/// Cluster-wide BGP settings.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    doc = "BGPConfiguration holds the cluster's BGP settings; the only object is named `default`.",
    validation = Rule::new("self.metadata.name == 'default'").message("metadata.name: the BGPConfiguration must be named 'default'"),
    printcolumn(name = "LogSeverity", type_ = "string", json_path = ".spec.logSeverityScreen", description = "BGP log level"),
    printcolumn(name = "MeshEnabled", type_ = "boolean", json_path = ".spec.nodeToNodeMeshEnabled", description = "Full node-to-node mesh"),
    printcolumn(name = "ASNumber", type_ = "integer", json_path = ".spec.asNumber", description = "The nodes' AS number")
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// The AS number of every node (default 64512). 4-octet AS numbers are supported.
    #[serde(default = "default_as_number")]
    #[schemars(range(min = 1, max = 4294967295u32), extend("format" = "int64"))]
    pub as_number: u32,
    /// Whether every node peers with every other node (default true). Turn it off when using route reflectors.
    #[serde(default = "default_true")]
    pub node_to_node_mesh_enabled: bool,
    /// TCP port the nodes listen on for BGP (default 179).
    #[serde(default = "default_listen_port")]
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub listen_port: u16,
    /// BGP log level: Error, Warning, Info (default), Debug.
    #[serde(default = "default_log_severity")]
    pub log_severity_screen: BgpLogSeverity,
    /// Service cluster IP ranges every node advertises.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "serviceClusterIPs")]
    #[schemars(length(max = 64))]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// Service external IP ranges every node advertises.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "serviceExternalIPs")]
    #[schemars(length(max = 64))]
    pub service_external_ips: Vec<ServiceCidr>,
    /// LoadBalancer IP ranges every node advertises.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "serviceLoadBalancerIPs")]
    #[schemars(length(max = 64))]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
    /// TCP MD5 password of the node-to-node mesh sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,
    /// How long mesh peers keep a restarting node's routes (graceful restart), e.g. `120s` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::duration::RULE).message("nodeMeshMaxRestartTime: must be a duration such as 120s or 2m"))]
    #[schemars(length(max = 32))]
    pub node_mesh_max_restart_time: Option<String>,
}

fn default_as_number() -> u32 {
    DEFAULT_AS_NUMBER
}

fn default_listen_port() -> u16 {
    DEFAULT_LISTEN_PORT
}

fn default_log_severity() -> BgpLogSeverity {
    BgpLogSeverity::Info
}

fn default_true() -> bool {
    true
}

impl Default for BGPConfigurationSpec {
    fn default() -> Self {
        BGPConfigurationSpec {
            as_number: DEFAULT_AS_NUMBER,
            node_to_node_mesh_enabled: true,
            listen_port: DEFAULT_LISTEN_PORT,
            log_severity_screen: BgpLogSeverity::Info,
            service_cluster_ips: Vec::new(),
            service_external_ips: Vec::new(),
            service_load_balancer_ips: Vec::new(),
            node_mesh_password: None,
            node_mesh_max_restart_time: None,
        }
    }
}

/// BGP log level.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BgpLogSeverity {
    Error,
    Warning,
    Info,
    Debug,
}

/// A range of service addresses to advertise.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceCidr {
    /// The range, in CIDR notation.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr: must be a CIDR"))]
    pub cidr: String,
}

/// A TCP MD5 password kept in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpPassword {
    /// The Secret key holding the password; the Secret lives in the tabby-system namespace.
    pub secret_key_ref: SecretKeySelector,
}

/// A BGP session beyond the node mesh: an external router, or another node (e.g. a route reflector).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers",
    doc = "BGPPeer is a BGP session beyond the node-to-node mesh: an external router or selected nodes.",
    printcolumn(name = "PeerIP", type_ = "string", json_path = ".spec.peerIP", description = "The peer's address"),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.node",
        description = "The node that peers (unset: every node)"
    ),
    printcolumn(name = "ASN", type_ = "integer", json_path = ".spec.asNumber", description = "The peer's AS number")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.node) && has(self.nodeSelector))").message("nodeSelector: set either node or nodeSelector, not both").field_path(".nodeSelector"))]
#[x_kube(validation = Rule::new("has(self.peerIP) != has(self.peerSelector)").message("peerIP: set exactly one of peerIP and peerSelector").field_path(".peerIP"))]
#[x_kube(validation = Rule::new("!has(self.peerIP) || has(self.asNumber)").message("asNumber: required with peerIP").field_path(".asNumber"))]
pub struct BGPPeerSpec {
    /// The node that opens this session. Unset (and no nodeSelector): every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
    /// Selects the nodes that open this session, e.g. `rack == 'r1'` or `all()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// The peer's address, optionally with a port: `10.0.0.1`, `10.0.0.1:1179`, `[fd00::1]:1179`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "peerIP")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self) || (self.matches('^[0-9.]+:[0-9]{1,5}$') && isIP(self.substring(0, self.lastIndexOf(':')))) || (self.matches('^\\\\[[0-9a-fA-F:.]+\\\\]:[0-9]{1,5}$') && isIP(self.substring(1, self.lastIndexOf(']'))))").message("peerIP: must be an IP address, optionally with a port (10.0.0.1:179 or [fd00::1]:179)"))]
    pub peer_ip: Option<String>,
    /// Selects other nodes to peer with, e.g. `route-reflector == 'true'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The peer's AS number (required with peerIP; with peerSelector the selected nodes' own AS is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u32), extend("format" = "int64"))]
    pub as_number: Option<u32>,
    /// TCP MD5 password of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// How long the peer keeps our routes while we restart (graceful restart), e.g. `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::duration::RULE).message("maxRestartTime: must be a duration such as 120s or 2m"))]
    #[schemars(length(max = 32))]
    pub max_restart_time: Option<String>,
    /// Keepalive interval of the session, e.g. `20s`; the hold time is three times it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::duration::RULE).message("keepaliveTime: must be a duration such as 20s"))]
    #[schemars(length(max = 32))]
    pub keepalive_time: Option<String>,
    /// Next hop of the routes we send: Auto (default), Self, or Keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    /// GTSM: the peer is at most this many hops away (RFC 5082).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255), extend("format" = "int32"))]
    pub ttl_security: Option<u8>,
    /// Source address of the session: UseNodeIP (default) or None (let the kernel pick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
}

/// Next hop of advertised routes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHopMode {
    /// Self for eBGP, unchanged for iBGP.
    Auto,
    /// Always this node.
    #[serde(rename = "Self")]
    SelfHop,
    /// Never changed.
    Keep,
}

/// Source address of a session.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceAddress {
    /// The node's detected address.
    UseNodeIP,
    /// Whatever the kernel picks.
    None,
}
