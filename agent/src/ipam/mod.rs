//! IPAM, Calico's block model (docs/ipam.md): [`allocator`] is the node's group-committing allocator,
//! [`gc`] leak release; the pure block math, the pool nodeSelector language and the leak rule are
//! `tabby_api::ipam::block`, `tabby_api::selector` and `tabby_api::ipam::leak`, shared with the CLI.
//! [`start`] wires them to informer caches and keeps the desired state (one block per eligible pool)
//! on pool events and a resync timer.

pub mod allocator;
pub mod gc;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tabby_api::ipam::{IPAMConfig, IPPool};
use tokio::sync::Notify;

pub use allocator::{Allocator, Caches, IpamError};

/// Starts an informer for `api` and returns its cache; `lean` trims each object before it is cached,
/// `changed` is notified on every event.
fn reflect<K>(api: Api<K>, cfg: watcher::Config, lean: fn(&mut K), changed: Option<Arc<Notify>>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff().modify(lean));
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

/// kubectl's copy of the whole object, in objects created with `kubectl apply`.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reader of a cache uses: managed fields and kubectl's last-applied copy.
pub fn lean_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = &mut m.annotations {
        a.remove(LAST_APPLIED);
    }
}

/// Keeps a pod's metadata (its annotations choose pools and addresses) and its node.
pub fn lean_pod(p: &mut Pod) {
    lean_meta(&mut p.metadata);
    p.spec = p.spec.take().map(|s| PodSpec { node_name: s.node_name, ..PodSpec::default() });
    p.status = None;
}

/// Keeps a namespace's metadata (its annotations choose pools).
pub fn lean_namespace(n: &mut Namespace) {
    lean_meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

/// Keeps a node's metadata (its labels select pools); its status (images, conditions) is the bulk.
pub fn lean_node(n: &mut Node) {
    lean_meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

fn lean_object<K: Resource>(o: &mut K) {
    lean_meta(o.meta_mut());
}

/// Starts the caches the allocator reads, waiting until they have synced. Pods are this node's only,
/// and every cache keeps only the fields the allocator and the leak release read.
pub async fn start_caches(client: &Client, node: &str, pools_changed: Arc<Notify>) -> Caches {
    let all = watcher::Config::default;
    let caches = Caches {
        pools: reflect(Api::<IPPool>::all(client.clone()), all(), lean_object, Some(pools_changed)),
        config: reflect(Api::<IPAMConfig>::all(client.clone()), all(), lean_object, None),
        pods: reflect(Api::<Pod>::all(client.clone()), all().fields(&format!("spec.nodeName={node}")), lean_pod, None),
        namespaces: reflect(Api::<Namespace>::all(client.clone()), all(), lean_namespace, None),
        nodes: reflect(
            Api::<Node>::all(client.clone()),
            all().fields(&format!("metadata.name={node}")),
            lean_node,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lean_objects_keep_what_ipam_reads() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                "annotations": {"tabby.dev/ipv4pools": "[\"a\"]", LAST_APPLIED: "{\"big\": 1}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "pause"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }))
        .unwrap();
        lean_pod(&mut p);
        assert_eq!(p.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        assert!(p.metadata.annotations.as_ref().unwrap().contains_key("tabby.dev/ipv4pools"));
        assert_eq!(p.metadata.labels.as_ref().map(|l| l.len()), Some(1));
        assert!(p.metadata.managed_fields.is_none() && p.status.is_none());
        let spec = p.spec.unwrap();
        assert_eq!((spec.node_name.as_deref(), spec.containers.len()), (Some("n1"), 0));

        let mut n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"images": [{"names": ["pause"], "sizeBytes": 1}]},
        }))
        .unwrap();
        lean_node(&mut n);
        assert_eq!(n.metadata.labels.unwrap()["zone"], "a");
        assert!(n.spec.is_none() && n.status.is_none());
    }
}
