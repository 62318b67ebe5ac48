//! CNI error codes: 1-99 are the spec's, 100+ Tabby's own (docs/cni.md lists them). The agent answers
//! with them on the socket and the plugin prints them as is.

pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNSUPPORTED_FIELD: u32 = 2;
pub const UNKNOWN_CONTAINER: u32 = 3;
pub const INVALID_ENV: u32 = 4;
pub const IO: u32 = 5;
pub const DECODE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
/// CHECK: the attachment differs from prevResult.
pub const CHECK_MISMATCH: u32 = 100;
/// No address left in the eligible pools.
pub const POOL_EXHAUSTED: u32 = 101;
/// The agent refused the request (details say why).
pub const AGENT: u32 = 102;
/// A netlink or sysctl operation failed.
pub const NETLINK: u32 = 103;
/// The agent found its own IPAM state broken (an invariant did not hold); retrying will not help.
pub const INTERNAL: u32 = 104;
