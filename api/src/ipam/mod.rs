//! IP address management (`tabby.dev/v1`), Calico's block model:
//! an [`IPPool`] is cut into blocks; a node claims a block through a [`BlockAffinity`] and the
//! [`IPAMBlock`] itself, and hands out the block's addresses to its pods, recording each one in the block
//! and, by handle, in an [`IPAMHandle`]. [`IPAMConfig`] holds the cluster-wide IPAM settings.

pub mod block;
pub mod leak;

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default block prefix length of IPv4 pools.
pub const DEFAULT_BLOCK_SIZE_V4: i32 = 26;
/// Default block prefix length of IPv6 pools.
pub const DEFAULT_BLOCK_SIZE_V6: i32 = 122;
/// Selector matching every node.
pub const ALL_NODES: &str = "all()";

fn default_node_selector() -> String {
    ALL_NODES.to_string()
}

/// A range of addresses pods get their addresses from.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    doc = "IPPool is a range of pod addresses, cut into per-node blocks.",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr", description = "The pool's range"),
    printcolumn(
        name = "NAT",
        type_ = "boolean",
        json_path = ".spec.natOutgoing",
        description = "Masquerade traffic leaving the pools"
    ),
    printcolumn(
        name = "IPIPMode",
        type_ = "string",
        json_path = ".spec.ipipMode",
        description = "IP-in-IP encapsulation"
    ),
    printcolumn(
        name = "VXLANMode",
        type_ = "string",
        json_path = ".spec.vxlanMode",
        description = "VXLAN encapsulation"
    ),
    printcolumn(
        name = "Disabled",
        type_ = "boolean",
        json_path = ".spec.disabled",
        description = "No new allocations"
    ),
    printcolumn(
        name = "Selector",
        type_ = "string",
        json_path = ".spec.nodeSelector",
        description = "Nodes that may use the pool",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.blockSize) || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))").message("blockSize: must be 20-32 for an IPv4 pool or 116-128 for an IPv6 pool").field_path(".blockSize"))]
#[x_kube(validation = Rule::new("!has(self.blockSize) || !isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()").message("blockSize: a block cannot be larger than the pool's cidr").field_path(".blockSize"))]
#[x_kube(validation = Rule::new("!isCIDR(self.cidr) || !isCIDR(oldSelf.cidr) || (has(self.blockSize) ? self.blockSize : (cidr(self.cidr).ip().family() == 4 ? 26 : 122)) == (has(oldSelf.blockSize) ? oldSelf.blockSize : (cidr(oldSelf.cidr).ip().family() == 4 ? 26 : 122))").message("blockSize: is immutable; add a new pool and disable this one instead").field_path(".blockSize").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("self.ipipMode == 'Never' || self.vxlanMode == 'Never'").message("ipipMode: IPIP and VXLAN cannot both be enabled on a pool").field_path(".ipipMode"))]
#[x_kube(validation = Rule::new("self.ipipMode == 'Never' || !isCIDR(self.cidr) || cidr(self.cidr).ip().family() == 4").message("ipipMode: IPIP is IPv4 only").field_path(".ipipMode"))]
pub struct IPPoolSpec {
    /// The pool's range in CIDR notation. Immutable: to change it, add a new pool and disable this one.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr: must be a CIDR such as 10.244.0.0/16"))]
    #[x_kube(validation = Rule::new("!isCIDR(self) || cidr(self).masked() == cidr(self)").message("cidr: host bits must be zero (use the network address)"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("cidr: is immutable; add a new pool and disable this one instead").reason(Reason::FieldValueForbidden))]
    pub cidr: String,
    /// Prefix length of the per-node blocks: 20-32 for IPv4 (unset: 26), 116-128 for IPv6 (unset: 122). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i32>,
    /// When to encapsulate pod traffic in IP-in-IP: Never (default), Always, or CrossSubnet.
    #[serde(default)]
    pub ipip_mode: EncapsulationMode,
    /// When to encapsulate pod traffic in VXLAN: Never (default), Always, or CrossSubnet.
    #[serde(default)]
    pub vxlan_mode: EncapsulationMode,
    /// Masquerade traffic from this pool to destinations outside every pool.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// No new addresses are handed out from a disabled pool; existing ones keep working.
    #[serde(default)]
    pub disabled: bool,
    /// Keep this pool's routes out of BGP advertisements to external peers.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// Which nodes may allocate blocks from this pool: `all()` (default) or a label selector such as `zone == 'a'`.
    #[serde(default = "default_node_selector")]
    #[schemars(length(max = 1024))]
    pub node_selector: String,
    /// What the pool's addresses are for: Workload (pods) and Tunnel (VXLAN/IPIP tunnel addresses). Default both.
    #[serde(default = "default_allowed_uses")]
    #[schemars(length(min = 1, max = 2))]
    pub allowed_uses: Vec<AllowedUse>,
}

impl IPPoolSpec {
    /// The block size in effect: the one set, else 26 for IPv4 and 122 for IPv6 pools.
    pub fn effective_block_size(&self) -> i32 {
        self.block_size.unwrap_or(if self.cidr.contains(':') { DEFAULT_BLOCK_SIZE_V6 } else { DEFAULT_BLOCK_SIZE_V4 })
    }
}

fn default_allowed_uses() -> Vec<AllowedUse> {
    vec![AllowedUse::Workload, AllowedUse::Tunnel]
}

/// When to encapsulate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncapsulationMode {
    /// Never encapsulate.
    #[default]
    Never,
    /// Always encapsulate traffic to other nodes.
    Always,
    /// Encapsulate only towards nodes in another subnet.
    CrossSubnet,
}

/// What a pool's addresses may be used for.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Tunnel device addresses.
    Tunnel,
}

/// Cluster-wide IPAM settings. A singleton named `default`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "IPAMConfig",
    plural = "ipamconfigs",
    doc = "IPAMConfig holds the cluster-wide IPAM settings; the only object is named `default`.",
    validation = Rule::new("self.metadata.name == 'default'").message("metadata.name: the IPAMConfig must be named 'default'")
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigSpec {
    /// Never borrow addresses from blocks affine to other nodes, even when this node's blocks are full.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks as needed (default true). When false, only blocks already owned are used.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// The most blocks one node may own per pool; 0 means the default (20).
    #[serde(default)]
    #[schemars(range(min = 0, max = 65536))]
    pub max_blocks_per_host: i32,
}

impl Default for IPAMConfigSpec {
    fn default() -> Self {
        IPAMConfigSpec { strict_affinity: false, auto_allocate_blocks: true, max_blocks_per_host: 0 }
    }
}

impl IPAMConfigSpec {
    /// The effective block limit per node and pool.
    pub fn effective_max_blocks_per_host(&self) -> u32 {
        if self.max_blocks_per_host <= 0 { DEFAULT_MAX_BLOCKS_PER_HOST } else { self.max_blocks_per_host as u32 }
    }
}

/// Blocks per node and pool when IPAMConfig does not say.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

fn default_true() -> bool {
    true
}

/// One block of a pool and every allocation in it. Written only by the agent that owns it (and the IPAM
/// garbage collector); every write is a compare-and-swap on resourceVersion.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    doc = "IPAMBlock is one block of a pool: its owner and every allocation in it.",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr", description = "The block"),
    printcolumn(
        name = "Affinity",
        type_ = "string",
        json_path = ".spec.affinity",
        description = "The owning node (host:<node>)"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The block's range.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr: must be a CIDR"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("cidr: is immutable"))]
    pub cidr: String,
    /// The node that owns the block, as `host:<node>`; unset while the block has no owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// One entry per address of the block, by ordinal: null when free, else an index into attributes.
    #[serde(default)]
    pub allocations: Vec<Option<i32>>,
    /// Free ordinals in the order they will be handed out (released ones go last, so reuse is delayed).
    #[serde(default)]
    pub unallocated: Vec<i32>,
    /// Who holds each allocation.
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    /// Bumped on every write.
    #[serde(default)]
    pub sequence_number: i64,
    /// Set while the block is being released.
    #[serde(default)]
    pub deleted: bool,
}

/// Who holds an allocation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AllocationAttribute {
    /// The handle the allocation is released by, e.g. `k8s-pod-network.<containerID>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Extra facts: node, namespace, pod, type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secondary: BTreeMap<String, String>,
}

/// A node's claim on a block: pending while the claim is in flight, confirmed once the block is the node's.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    doc = "BlockAffinity is a node's claim on a block.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node", description = "The node"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr", description = "The block"),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".spec.state",
        description = "pending, confirmed or pendingDeletion"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    /// pending → confirmed → pendingDeletion.
    pub state: AffinityState,
    /// The node claiming the block.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("node: is immutable"))]
    pub node: String,
    /// The block.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr: must be a CIDR"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("cidr: is immutable"))]
    pub cidr: String,
    /// Set while the affinity is being released.
    #[serde(default)]
    pub deleted: bool,
}

/// State of a block claim.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    /// Claimed, block not yet confirmed as ours.
    Pending,
    /// The block is ours.
    Confirmed,
    /// Being released.
    PendingDeletion,
}

/// Index from a handle to the blocks holding its addresses, so release by handle needs no block scan.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    doc = "IPAMHandle maps an allocation handle to the blocks that hold its addresses.",
    printcolumn(name = "Handle", type_ = "string", json_path = ".spec.handleID", description = "The handle")
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandleSpec {
    /// The handle, e.g. `k8s-pod-network.<containerID>`.
    #[serde(rename = "handleID")]
    #[schemars(length(min = 1))]
    pub handle_id: String,
    /// Block CIDR → number of this handle's addresses in it.
    #[serde(default)]
    pub block: BTreeMap<String, i32>,
    /// Set while the handle is being released.
    #[serde(default)]
    pub deleted: bool,
}

/// The object name of a block or affinity part: the CIDR with `.`, `:` and `/` turned into `-`
/// (`10.244.1.0/26` → `10-244-1-0-26`), as Calico names them.
pub fn cidr_object_name(cidr: &str) -> String {
    cidr.chars().map(|c| if matches!(c, '.' | ':' | '/') { '-' } else { c }).collect()
}

/// The name of a node's BlockAffinity for a block: `<node>-<cidr name>`.
pub fn block_affinity_name(node: &str, cidr: &str) -> String {
    format!("{node}-{}", cidr_object_name(cidr))
}

/// The `affinity` value of a block owned by `node`.
pub fn host_affinity(node: &str) -> String {
    format!("host:{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_calico() {
        assert_eq!(cidr_object_name("10.244.1.0/26"), "10-244-1-0-26");
        assert_eq!(cidr_object_name("fd00:10:244::/122"), "fd00-10-244---122");
        assert_eq!(block_affinity_name("worker-1", "10.244.1.0/26"), "worker-1-10-244-1-0-26");
        assert_eq!(host_affinity("worker-1"), "host:worker-1");
    }

    #[test]
    fn max_blocks_default() {
        assert_eq!(IPAMConfigSpec::default().effective_max_blocks_per_host(), 20);
        let s = IPAMConfigSpec { max_blocks_per_host: 3, ..Default::default() };
        assert_eq!(s.effective_max_blocks_per_host(), 3);
    }
}
