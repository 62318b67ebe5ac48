//! `tabby-operator`: reconciles `Installation/default` into Tabby's running pod network.
//!
//! - [`computed`], [`validate`], [`render`], [`status`]: pure functions (effective spec, checks, objects,
//!   conditions), unit- and golden-tested.
//! - [`apply`]: server-side apply that writes only what differs.
//! - [`controller`]: the reconcile loop, status, events and staged teardown.
//! - [`leader`]: Lease-based leader election; [`helmvalues`]: the Installation from Helm values.

pub mod apply;
pub mod computed;
pub mod controller;
pub mod helmvalues;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod status;
pub mod validate;
