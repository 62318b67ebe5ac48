//! Test support shared by every crate's suites (publish = false, a dev-dependency only).
//!
//! - [`controlplane`]: a real etcd + kube-apiserver (+ controller-manager, scheduler) per test;
//! - [`in_ci`] and [`start_or_skip`]: in CI (`CI=true`) a test that cannot run fails; elsewhere it is
//!   skipped with a visible message;
//! - [`cases`]: case tables more than one crate is tested against (`api/tests/cases/`).

pub mod cases;
pub mod controlplane;

pub use controlplane::{ControlPlane, Error, Options, binary, helm, in_ci, repo_root, start_or_skip};
