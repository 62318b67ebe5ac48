//! Tabby's BGP speaker: a pure wire codec, RFC 4271 sessions, RIBs with best path selection,
//! route reflection (RFC 4456) and graceful restart (RFC 4724). No Kubernetes dependency.
//!
//! Layout: [`codec`] (bytes ↔ [`message`]), [`session`](crate::Speaker) (one task per peer),
//! [`rib`] (tables), [`best`] (selection), [`policy`] (built-in rules and agent hooks),
//! [`speaker`] (wiring and the state API), [`socket`] (MD5, GTSM).

pub mod best;
pub mod codec;
pub mod config;
pub mod hash;
pub mod message;
pub mod policy;
pub mod rib;
mod session;
pub mod socket;
pub mod speaker;
pub mod status;
pub mod types;

pub use config::{GracefulRestartConfig, PeerConfig, SpeakerConfig};
pub use message::*;
pub use policy::{AcceptAll, PeerInfo, Policy};
pub use rib::{PeerId, RouteAttrs};
pub use speaker::{PeerError, RibEvent, RouteEntry, Speaker};
pub use status::{PeerStatus, State};
pub use types::*;
