//! The Tabby CNI plugin (`tabby`). The protocol it speaks with the node agent, its error codes and the
//! names it shares with the agent and the CLI are in `tabby-wire`.
//!
//! The plugin is thin on purpose: parse the configuration and `CNI_*`, ask the agent on its unix socket for
//! the pod's addresses, wire the pod with netlink, print the result. It runs on one thread with no async
//! runtime, so a pod start pays a few milliseconds for it, not a runtime's start-up.

pub mod log;
pub mod netlink;
pub mod plugin;
pub mod spec;
