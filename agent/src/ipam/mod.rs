//! IPAM, Calico's block model (docs/ipam.md). The pure block math, the pool nodeSelector language and the
//! leak rule are `tabby_api::ipam::block`, `tabby_api::selector` and `tabby_api::ipam::leak`, shared with the
//! CLI; the caches it reads are the agent's one informer set (`crate::facts`).
//!
//! | module | what |
//! |---|---|
//! | [`allocator`] | the node's allocator: its blocks, requests in, answers out, block claims |
//! | [`request`] | pure: the pools and fixed addresses a request may draw from |
//! | [`assign`] | pure: planning a batch against a copy of the blocks, and what a plan needs from the API |
//! | [`commit`] | the group-commit loop: plan, get what plans need, write each block once, answer |
//! | [`store`] | the API: blocks, affinities and handles, with compare-and-swap |
//! | [`gc`] | leak release at start and the leader-elected cluster garbage collector |

pub mod allocator;
pub mod assign;
pub mod commit;
pub mod gc;
pub mod request;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub use allocator::{Allocator, IpamError, Purpose};

/// Allocations in use and blocks owned, for the metrics (copies this node's blocks: only on a scrape).
pub fn counts(alloc: &Allocator) -> crate::metrics::IpamCounts {
    let blocks = alloc.blocks();
    let allocations = blocks.iter().map(|b| b.spec.allocations.iter().flatten().count() as u64).sum();
    crate::metrics::IpamCounts { allocations, blocks: blocks.len() as u64 }
}

/// Keeps one block per eligible pool claimed: on pool events and every `resync`.
pub async fn reconcile_blocks(alloc: Allocator, pools_changed: Arc<Notify>, resync: Duration) {
    loop {
        tokio::select! {
            _ = pools_changed.notified() => {}
            _ = tokio::time::sleep(resync) => {}
        }
        let started = Instant::now();
        let r = alloc.preclaim().await;
        crate::reconcile::observe("ipam", started, r.is_ok());
        if let Err(e) = r {
            tracing::warn!(error = %e, "pre-claiming blocks failed");
        }
    }
}

/// The IPv4 tunnel address of `handle`, allocated on first use from a pool of the tunnel's encapsulation.
pub async fn tunnel_address(alloc: &Allocator, handle: &str, purpose: Purpose) -> Result<std::net::Ipv4Addr, String> {
    let what = if purpose == Purpose::IpipTunnel { "IPIP" } else { "VXLAN" };
    let v4 = |v: Vec<allocator::Granted>| {
        v.into_iter().find_map(|(ip, _)| match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    };
    if let Some(a) = alloc.addresses_of(handle).and_then(v4) {
        return Ok(a);
    }
    let req = allocator::AllocRequest { handle: handle.to_string(), purpose, ..Default::default() };
    let why = match alloc.allocate(req).await {
        Ok(v) => match v4(v) {
            Some(a) => return Ok(a),
            None => "IPAM granted no IPv4 address".to_string(),
        },
        Err(e) => e.to_string(),
    };
    tracing::warn!(error = %why, "allocating the {what} tunnel address");
    Err(format!("allocating the {what} tunnel address: {why}"))
}

/// Releases a tunnel address whose encapsulation is no longer used (Calico does the same).
pub async fn release_tunnel_address(alloc: Option<&Allocator>, handle: &str) {
    let Some(alloc) = alloc else { return };
    if alloc.addresses_of(handle).is_some_and(|v| !v.is_empty()) {
        let sel = allocator::ReleaseSel::Handle(handle.to_string());
        match alloc.release(sel).await {
            Ok(n) => tracing::info!(handle, released = n, "released the tunnel address"),
            Err(e) => tracing::warn!(handle, error = %e, "releasing the tunnel address"),
        }
    }
}
