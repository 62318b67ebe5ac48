//! Tabby's BGP speaker: a pure wire codec, RFC 4271 sessions, RIBs with best path selection,
//! route reflection (RFC 4456) and graceful restart (RFC 4724). No Kubernetes dependency.

pub mod codec;
pub mod message;
pub mod types;

pub use message::*;
pub use types::*;
