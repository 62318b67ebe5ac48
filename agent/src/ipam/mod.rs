//! IPAM, Calico's block model (docs/ipam.md): [`block`] is the pure math over one block, [`selector`] the
//! pool nodeSelector language, [`allocator`] the node's group-committing allocator, [`gc`] leak release.
//! [`start`] wires them to informer caches and keeps the desired state (one block per eligible pool)
//! on pool events and a resync timer.

pub mod allocator;
pub mod block;
pub mod gc;
pub mod selector;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tabby_api::ipam::{IPAMConfig, IPPool};
use tokio::sync::Notify;

pub use allocator::{Allocator, Caches, IpamError};

/// Starts an informer for `api` and returns its cache; `changed` is notified on every event.
fn reflect<K>(api: Api<K>, cfg: watcher::Config, changed: Option<Arc<Notify>>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    tokio::spawn(async move {
        stream
            .for_each(|ev| {
                if let Err(e) = &ev {
                    tracing::debug!(error = %e, "watch error (retrying)");
                } else if let Some(n) = &changed {
                    n.notify_one();
                }
                futures::future::ready(())
            })
            .await
    });
    reader
}

/// Starts the caches the allocator reads, waiting until they have synced.
pub async fn start_caches(client: &Client, node: &str, pools_changed: Arc<Notify>) -> Caches {
    let caches = Caches {
        pools: reflect(Api::<IPPool>::all(client.clone()), watcher::Config::default(), Some(pools_changed)),
        config: reflect(Api::<IPAMConfig>::all(client.clone()), watcher::Config::default(), None),
        pods: reflect(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            None,
        ),
        namespaces: reflect(Api::<Namespace>::all(client.clone()), watcher::Config::default(), None),
        nodes: reflect(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node}")),
            None,
        ),
    };
    let _ = caches.pools.wait_until_ready().await;
    let _ = caches.config.wait_until_ready().await;
    let _ = caches.pods.wait_until_ready().await;
    let _ = caches.namespaces.wait_until_ready().await;
    let _ = caches.nodes.wait_until_ready().await;
    caches
}

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
        let started = std::time::Instant::now();
        let r = alloc.preclaim().await;
        crate::metrics::reconcile_done("ipam", started.elapsed(), r.is_ok());
        if let Err(e) = r {
            tracing::warn!(error = %e, "pre-claiming blocks failed");
        }
    }
}
