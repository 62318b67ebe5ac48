//! The contracts that cross Tabby's binaries, in one small crate every side depends on (std, serde and
//! SHA-1 only, so the CNI plugin stays thin):
//!
//! - [`proto`]: the plugin ↔ agent protocol on the agent's unix socket (docs/cni.md);
//! - [`code`]: CNI error codes, the spec's and Tabby's own, which the agent answers and the plugin prints;
//! - [`names`]: host veth names (plugin, agent routes and leak checks, `kubectl tabby get wep`), IPAM
//!   handle ids, and the route protocol number of every route Tabby installs.

pub mod code;
pub mod names;
pub mod proto;

pub use names::{RTPROT_TABBY, VETH_PREFIX, attachment_veth, handle_id, veth_name};
