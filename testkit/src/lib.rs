//! Test support shared by every crate's suites (publish = false, a dev-dependency only).
//!
//! | module | what |
//! |---|---|
//! | [`controlplane`] | a real etcd + kube-apiserver (+ controller-manager, scheduler) per test |
//! | [`skip`] | when a test cannot run: fail in CI (`CI=true`), else skip with a visible message |
//! | [`netns`] | named network namespaces, running code and commands inside them |
//! | [`process`] | checked commands, processes killed on drop, unique names, sibling crates' binaries |
//! | [`poll`] | waiting for a condition with a timeout and a useful failure message |
//! | [`cases`] | case tables more than one crate is tested against (`api/tests/cases/`) |
//! | [`cluster`] | a control plane with Tabby's CRDs, `tabby-agent` processes, the plugin run as a runtime runs it |
//! | [`nodelab`] | node namespaces on an underlay, each with an agent, pods wired by the plugin |
//! | [`traffic`] | TCP and UDP servers and clients in namespaces (policy tests) |

pub mod cases;
pub mod cluster;
pub mod controlplane;
pub mod netns;
pub mod nodelab;
pub mod poll;
pub mod process;
pub mod skip;
pub mod traffic;

pub use controlplane::{ControlPlane, Error, Options, binary, helm, repo_root, start_or_skip};
pub use skip::in_ci;
