//! Tabby's Kubernetes API: the custom resource types, their defaults and their validation rules.
//!
//! Everything here is pure: types, schemas, CEL rules and functions over values. Nothing does I/O,
//! so the operator, the agent, the CLI and the manifest generator all share one definition — of the
//! objects, and of the rules over them that more than one binary applies: Calico's block math
//! ([`ipam::block`]), what counts as a leaked address ([`ipam::leak`]), the selector language
//! ([`selector`]) and Go-style durations ([`duration`]).
//!
//! Two API groups:
//! - `operator.tabby.dev/v1`: [`Installation`] (what the user asks for) and [`TabbyStatus`] (how it is going).
//! - `tabby.dev/v1`: the network's own objects, named after their Calico v3 counterparts:
//!   [`IPPool`], [`IPAMConfig`], [`IPAMBlock`], [`BlockAffinity`], [`IPAMHandle`], [`BGPConfiguration`],
//!   [`BGPPeer`] and [`NodeStatus`]; network policy ([`policy`]): NetworkPolicy, GlobalNetworkPolicy, their
//!   staged twins, NetworkSet, GlobalNetworkSet and Tier.
//! - `policy.networking.k8s.io/v1beta1` (and `v1alpha2`): ClusterNetworkPolicy ([`policy::cnp`]), installed when absent.

// `#[kube(printcolumn(...), printcolumn(...))]` repeats keys such as `type_` by design; clippy's
// duplicated-attributes lint reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod agentenv;
pub mod bgp;
pub mod condition;
pub mod crds;
pub mod duration;
pub mod installation;
pub mod ipam;
pub mod names;
pub mod nodestatus;
pub mod pod;
pub mod policy;
pub mod rbac;
pub mod selector;
pub mod tabbystatus;

pub use bgp::{BGPConfiguration, BGPConfigurationSpec, BGPPeer, BGPPeerSpec};
pub use installation::{Installation, InstallationSpec, InstallationStatus};
pub use ipam::{
    BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMBlockSpec, IPAMConfig, IPAMConfigSpec, IPAMHandle, IPAMHandleSpec,
    IPPool, IPPoolSpec,
};
pub use nodestatus::{NodeStatus, NodeStatusSpec, NodeStatusStatus};
pub use tabbystatus::{TabbyStatus, TabbyStatusSpec, TabbyStatusStatus};

/// The API group of the operator's own resources.
pub const OPERATOR_GROUP: &str = "operator.tabby.dev";
/// The API group of the network's resources.
pub const NETWORK_GROUP: &str = "tabby.dev";
