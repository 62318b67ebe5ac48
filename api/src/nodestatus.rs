//! `NodeStatus` (`tabby.dev/v1`): what one node's agent reports about its part of the network.
//!
//! One object per node, named after the node, written only by that node's agent (status subresource).
//! The operator aggregates them; `kubectl tabby node status` prints them.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// Which node this status belongs to.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "NodeStatus",
    plural = "nodestatuses",
    status = "NodeStatusStatus",
    doc = "NodeStatus is the state of one node's Tabby agent: conditions, BGP peers, blocks, routes and MTU.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The node's pod network works"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.addressV4",
        description = "The node's IPv4 address"
    ),
    printcolumn(
        name = "MTU",
        type_ = "integer",
        json_path = ".status.mtu",
        description = "Pod interface MTU on this node"
    ),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeat",
        description = "When the agent last reported"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusSpec {
    /// Name of the Node this status describes (the same as this object's name).
    pub node: String,
}

/// What the agent observed and programmed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusStatus {
    /// Ready, IPAMReady, RoutesReady, BGPReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The node's detected IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "addressV4")]
    pub address_v4: Option<String>,
    /// The node's detected IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "addressV6")]
    pub address_v6: Option<String>,
    /// BGP sessions of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
    /// CIDRs of the IPAM blocks this node owns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<String>,
    /// Routes the agent has programmed into the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<RouteCounts>,
    /// MTU of pod interfaces on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// Version of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// When the agent last wrote this status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
}

/// BGP state of a node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpStatus {
    /// Established sessions.
    #[serde(default)]
    pub peers_established: i32,
    /// IPv4 peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "peersV4")]
    pub peers_v4: Vec<BgpPeerStatus>,
    /// IPv6 peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "peersV6")]
    pub peers_v6: Vec<BgpPeerStatus>,
}

/// One BGP session, as `kubectl tabby node status` prints it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerStatus {
    /// The peer's address.
    #[serde(rename = "peerIP")]
    pub peer_ip: String,
    /// Why we peer: node-to-node mesh, global, node specific, route reflector client.
    #[serde(rename = "type")]
    pub type_: PeerType,
    /// Session state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// When the session entered its state (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Detail: the last error, or prefix counts when established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
}

/// Why a node peers with another speaker (the PEER TYPE column).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PeerType {
    /// Another node of the full mesh.
    #[default]
    #[serde(rename = "NodeMesh")]
    NodeMesh,
    /// A BGPPeer that applies to every node.
    #[serde(rename = "GlobalPeer")]
    GlobalPeer,
    /// A BGPPeer that applies to this node only.
    #[serde(rename = "NodePeer")]
    NodePeer,
    /// A client of this node acting as route reflector.
    #[serde(rename = "RouteReflectorClient")]
    RouteReflectorClient,
}

impl PeerType {
    /// The words calicoctl users know from `node status`.
    pub fn describe(self) -> &'static str {
        match self {
            PeerType::NodeMesh => "node-to-node mesh",
            PeerType::GlobalPeer => "global",
            PeerType::NodePeer => "node specific",
            PeerType::RouteReflectorClient => "route reflector client",
        }
    }
}

/// Routes programmed by the agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteCounts {
    /// Routes to local pods (`dev tby…`).
    #[serde(default)]
    pub local: i32,
    /// Routes to other nodes' blocks.
    #[serde(default)]
    pub remote: i32,
    /// Blackhole routes for this node's blocks.
    #[serde(default)]
    pub blackhole: i32,
}

/// `t` as NodeStatus writes times: RFC 3339 in UTC, to the second (`2026-01-02T08:27:05Z`).
pub fn timestamp(t: std::time::SystemTime) -> String {
    use k8s_openapi::jiff::Timestamp;
    let secs = Timestamp::try_from(t).map_or(0, |t| t.as_second());
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_to_the_second() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_900)), "2023-11-14T22:13:20Z");
    }
}
