//! Tabby's end-to-end tests and the `make lab` lab (`lab`). The test support they stand on — the
//! control plane ([`ControlPlane`], [`Options`], [`start_or_skip`]) and the CI rules ([`in_ci`]) — lives in
//! `tabby-testkit`, re-exported here unchanged.

pub mod conformance;
pub mod cyclonus;
pub mod lab;

pub use tabby_testkit::*;
