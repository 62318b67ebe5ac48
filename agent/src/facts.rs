//! The agent's one view of the API: one informer per kind, each cache trimmed to what the agent reads,
//! shared by IPAM (which reads single objects from the stores) and the network pass (which reads a
//! [`Snapshot`] per pass).
//!
//! | kind | scope | kept |
//! |---|---|---|
//! | Node | all | metadata, `status.addresses` (InternalIP for `kubernetes-internal-ip`) |
//! | IPAMBlock | all | everything but managed fields |
//! | IPPool, IPAMConfig, BGPConfiguration, BGPPeer | all | everything but managed fields |
//! | Secret | `tabby-system` | everything but managed fields (BGP passwords) |
//! | Pod | all | name, namespace, labels (selected by policy), annotations (choose pools and addresses), deletion time; node name, host network, service account, named container ports, addresses, phase |
//! | Namespace | all | metadata (annotations choose pools, labels are selected by policy) |
//! | NetworkPolicy (Kubernetes), NetworkPolicy, GlobalNetworkPolicy, their staged twins, NetworkSet, GlobalNetworkSet, Tier, ClusterNetworkPolicy | all | everything but managed fields |
//!
//! Every cache drops `managedFields` and kubectl's last-applied copy: at 10k pods and 100 nodes that is
//! megabytes of RSS the agent never reads.

use std::borrow::Borrow;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, NodeStatus, Secret, SecretKeySelector, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tabby_api::bgp::{BGPConfiguration, BGPConfigurationSpec, BGPPeer};
use tabby_api::ipam::{IPAMBlock, IPAMConfig, IPPool};
use tabby_api::names;
use tabby_api::pod::{LAST_APPLIED, LeanContainer, LeanPod};
use tabby_api::policy::cnp::ClusterNetworkPolicy;
use tabby_api::policy::{
    GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, NetworkSet, StagedGlobalNetworkPolicy, StagedNetworkPolicy,
    Tier,
};
use tokio::sync::Notify;

/// The informer caches, cheap to clone.
#[derive(Clone)]
pub struct Facts {
    /// This node.
    pub node: String,
    pub nodes: Store<Node>,
    pub blocks: Store<IPAMBlock>,
    pub pools: Store<IPPool>,
    pub ipam_config: Store<IPAMConfig>,
    pub bgp_configs: Store<BGPConfiguration>,
    pub bgp_peers: Store<BGPPeer>,
    pub secrets: Store<Secret>,
    /// Every pod of the cluster (policy selects pods of every node).
    pub pods: Store<LeanPod>,
    pub namespaces: Store<Namespace>,
    pub policy: PolicyStores,
    /// Notified on every event of the kinds the network pass reads.
    pub changed: Arc<Notify>,
    /// Notified on IPPool events (IPAM keeps a block per eligible pool).
    pub pools_changed: Arc<Notify>,
}

/// Starts an informer for `api` and returns its cache; `trim` shortens each object before it is cached,
/// and every `notify` is notified on each event.
fn reflect<K>(api: Api<K>, cfg: watcher::Config, trim: fn(&mut K), notify: Vec<Arc<Notify>>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff().modify(trim));
    tokio::spawn(async move {
        stream
            .for_each(|ev| {
                match &ev {
                    Err(e) => tracing::debug!(error = %e, "watch error (retrying)"),
                    Ok(_) => notify.iter().for_each(|n| n.notify_one()),
                }
                futures::future::ready(())
            })
            .await
    });
    reader
}

/// Drops what no reader of a cache uses: managed fields and kubectl's last-applied copy.
pub fn lean_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = &mut m.annotations {
        a.remove(LAST_APPLIED);
    }
}

fn lean<K: Resource>(o: &mut K) {
    lean_meta(o.meta_mut());
}

/// Keeps what IPAM and policy read of a pod (the cache holds [`LeanPod`]s, which the watch parses with
/// nothing else): its metadata without managed fields, and only containers with named ports.
pub fn lean_pod(p: &mut LeanPod) {
    lean_meta(&mut p.metadata);
    // Nothing reads a cached pod's uid or version (the watch has taken the version from the event before
    // this runs), and the cache's key copies both: four strings per pod, 2 MiB at 10,000 pods.
    p.metadata.uid = None;
    p.metadata.resource_version = None;
    p.compact_labels();
    if let Some(s) = &mut p.spec {
        let named = |v: &mut Vec<LeanContainer>| {
            v.retain_mut(|c| {
                c.ports = c.ports.take().map(|ps| ps.into_iter().filter(|p| p.name.is_some()).collect());
                c.ports.as_ref().is_some_and(|ps| !ps.is_empty())
            });
        };
        named(&mut s.containers);
        if let Some(v) = &mut s.init_containers {
            named(v);
        }
    }
}

/// Keeps a ServiceAccount's metadata (its labels select its pods), not its secrets' names.
pub fn lean_service_account(sa: &mut ServiceAccount) {
    lean_meta(&mut sa.metadata);
    sa.metadata.annotations = None;
    sa.secrets = None;
    sa.image_pull_secrets = None;
    sa.automount_service_account_token = None;
}

/// Keeps a namespace's metadata (its annotations choose pools).
pub fn lean_namespace(n: &mut Namespace) {
    lean_meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

/// Keeps a node's metadata (labels select pools and peers, annotations carry addresses and VTEPs) and
/// its addresses (kubernetes-internal-ip); its status is otherwise images and conditions, the bulk.
pub fn lean_node(n: &mut Node) {
    lean_meta(&mut n.metadata);
    n.spec = None;
    n.status = n.status.take().map(|s| NodeStatus { addresses: s.addresses, ..NodeStatus::default() });
}

impl Facts {
    /// Starts every informer and waits until each has listed once.
    pub async fn start(client: &Client, node: &str) -> Facts {
        let all = watcher::Config::default;
        let changed = Arc::new(Notify::new());
        let pools_changed = Arc::new(Notify::new());
        let net = || vec![changed.clone()];
        let facts = Facts {
            node: node.to_string(),
            nodes: reflect(Api::all(client.clone()), all(), lean_node, net()),
            blocks: reflect(Api::all(client.clone()), all(), lean, net()),
            pools: reflect(Api::all(client.clone()), all(), lean, vec![changed.clone(), pools_changed.clone()]),
            ipam_config: reflect(Api::all(client.clone()), all(), lean, vec![]),
            bgp_configs: reflect(Api::all(client.clone()), all(), lean, net()),
            bgp_peers: reflect(Api::all(client.clone()), all(), lean, net()),
            secrets: reflect(Api::namespaced(client.clone(), names::SYSTEM_NAMESPACE), all(), lean, net()),
            pods: reflect(Api::all(client.clone()), all(), lean_pod, net()),
            namespaces: reflect(Api::all(client.clone()), all(), lean_namespace, net()),
            policy: PolicyStores {
                k8s: reflect(Api::all(client.clone()), all(), lean, net()),
                namespaced: reflect(Api::all(client.clone()), all(), lean, net()),
                global: reflect(Api::all(client.clone()), all(), lean, net()),
                staged: reflect(Api::all(client.clone()), all(), lean, net()),
                staged_global: reflect(Api::all(client.clone()), all(), lean, net()),
                sets: reflect(Api::all(client.clone()), all(), lean, net()),
                global_sets: reflect(Api::all(client.clone()), all(), lean, net()),
                tiers: reflect(Api::all(client.clone()), all(), lean, net()),
                cnps: reflect(Api::all(client.clone()), all(), lean, net()),
                service_accounts: reflect(Api::all(client.clone()), all(), lean_service_account, net()),
            },
            changed,
            pools_changed,
        };
        let waits = [
            ("nodes", facts.nodes.wait_until_ready().await),
            ("blocks", facts.blocks.wait_until_ready().await),
            ("pools", facts.pools.wait_until_ready().await),
            ("ipamconfigs", facts.ipam_config.wait_until_ready().await),
            ("bgpconfigurations", facts.bgp_configs.wait_until_ready().await),
            ("bgppeers", facts.bgp_peers.wait_until_ready().await),
            ("secrets", facts.secrets.wait_until_ready().await),
            ("pods", facts.pods.wait_until_ready().await),
            ("namespaces", facts.namespaces.wait_until_ready().await),
            ("networkpolicies.networking.k8s.io", facts.policy.k8s.wait_until_ready().await),
            ("networkpolicies", facts.policy.namespaced.wait_until_ready().await),
            ("globalnetworkpolicies", facts.policy.global.wait_until_ready().await),
            ("stagednetworkpolicies", facts.policy.staged.wait_until_ready().await),
            ("stagedglobalnetworkpolicies", facts.policy.staged_global.wait_until_ready().await),
            ("networksets", facts.policy.sets.wait_until_ready().await),
            ("globalnetworksets", facts.policy.global_sets.wait_until_ready().await),
            ("tiers", facts.policy.tiers.wait_until_ready().await),
            ("serviceaccounts", facts.policy.service_accounts.wait_until_ready().await),
        ];
        // ClusterNetworkPolicy's CRD is optional (the operator installs it when absent): a cluster
        // without it must not hold the agent up.
        let cnp = tokio::time::timeout(std::time::Duration::from_secs(5), facts.policy.cnps.wait_until_ready()).await;
        if !matches!(cnp, Ok(Ok(()))) {
            tracing::warn!("ClusterNetworkPolicies could not be listed (no CRD yet?); they apply once they can");
        }
        for (kind, r) in waits {
            if let Err(e) = r {
                tracing::warn!(kind, error = %e, "a cache did not become ready; it fills when its watch does");
            }
        }
        facts
    }

    /// What the network pass reads, at this moment (shared objects: nothing is copied).
    pub fn snapshot(&self) -> Snapshot {
        let bgp_config = self
            .bgp_configs
            .state()
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(names::DEFAULT_NAME))
            .map(|b| b.spec.clone())
            .unwrap_or_default();
        Snapshot {
            node: self.node.clone(),
            nodes: self.nodes.state(),
            blocks: self.blocks.state(),
            pools: self.pools.state(),
            bgp_config,
            bgp_peers: self.bgp_peers.state(),
            secrets: self.secrets.state(),
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            policy: PolicyFacts {
                k8s: self.policy.k8s.state(),
                namespaced: self.policy.namespaced.state(),
                global: self.policy.global.state(),
                staged: self.policy.staged.state(),
                staged_global: self.policy.staged_global.state(),
                sets: self.policy.sets.state(),
                global_sets: self.policy.global_sets.state(),
                tiers: self.policy.tiers.state(),
                cnps: self.policy.cnps.state(),
                service_accounts: self.policy.service_accounts.state(),
            },
        }
    }
}

/// The caches of every kind of policy object.
#[derive(Clone)]
pub struct PolicyStores {
    pub k8s: Store<K8sNetworkPolicy>,
    pub namespaced: Store<NetworkPolicy>,
    pub global: Store<GlobalNetworkPolicy>,
    pub staged: Store<StagedNetworkPolicy>,
    pub staged_global: Store<StagedGlobalNetworkPolicy>,
    pub sets: Store<NetworkSet>,
    pub global_sets: Store<GlobalNetworkSet>,
    pub tiers: Store<Tier>,
    pub cnps: Store<ClusterNetworkPolicy>,
    /// Their labels select pods (`serviceAccounts.selector`).
    pub service_accounts: Store<ServiceAccount>,
}

/// Every policy object, as one pass sees them.
#[derive(Debug, Clone, Default)]
pub struct PolicyFacts {
    pub k8s: Vec<Arc<K8sNetworkPolicy>>,
    pub namespaced: Vec<Arc<NetworkPolicy>>,
    pub global: Vec<Arc<GlobalNetworkPolicy>>,
    pub staged: Vec<Arc<StagedNetworkPolicy>>,
    pub staged_global: Vec<Arc<StagedGlobalNetworkPolicy>>,
    pub sets: Vec<Arc<NetworkSet>>,
    pub global_sets: Vec<Arc<GlobalNetworkSet>>,
    pub tiers: Vec<Arc<Tier>>,
    pub cnps: Vec<Arc<ClusterNetworkPolicy>>,
    pub service_accounts: Vec<Arc<ServiceAccount>>,
}

/// The API as one network pass sees it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// This node's name.
    pub node: String,
    pub nodes: Vec<Arc<Node>>,
    pub blocks: Vec<Arc<IPAMBlock>>,
    pub pools: Vec<Arc<IPPool>>,
    /// `BGPConfiguration/default` (defaults when there is none).
    pub bgp_config: BGPConfigurationSpec,
    pub bgp_peers: Vec<Arc<BGPPeer>>,
    pub secrets: Vec<Arc<Secret>>,
    /// Every pod and namespace of the cluster.
    pub pods: Vec<Arc<LeanPod>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub policy: PolicyFacts,
}

impl Snapshot {
    /// This node's Node object.
    pub fn my_node(&self) -> Option<&Node> {
        self.nodes.iter().map(Borrow::borrow).find(|n: &&Node| n.metadata.name.as_deref() == Some(self.node.as_str()))
    }

    /// A key of a Secret of `tabby-system` as text.
    pub fn secret(&self, s: &SecretKeySelector) -> Option<String> {
        let sec = self.secrets.iter().find(|x| x.metadata.name.as_deref() == Some(s.name.as_str()))?;
        let v = sec.data.as_ref()?.get(&s.key)?;
        String::from_utf8(v.0.clone()).ok()
    }
}

/// Node annotation: the node's IPv4 address with its prefix length (`192.168.100.2/24`), published by its
/// agent, read by every other (peers, routes, CrossSubnet).
pub const ANNOTATION_V4: &str = "tabby.dev/IPv4Address";
/// Node annotation: the node's IPv6 address with its prefix length.
pub const ANNOTATION_V6: &str = "tabby.dev/IPv6Address";

/// A node's address from its annotation (other nodes' addresses, for peers and routes).
pub fn node_address(node: &Node, v6: bool) -> Option<IpNet> {
    let key = if v6 { ANNOTATION_V6 } else { ANNOTATION_V4 };
    let v = node.metadata.annotations.as_ref()?.get(key)?;
    v.parse::<IpNet>().ok().or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A node's annotation or label.
pub fn node_meta<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    let m = &node.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(key)))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lean_objects_keep_what_the_agent_reads() {
        let mut p: LeanPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "5", "labels": {"app": "web"},
                "annotations": {"tabby.dev/ipv4pools": "[\"a\"]", LAST_APPLIED: "{\"big\": 1}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "pause"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        lean_pod(&mut p);
        assert_eq!(p.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        assert!(p.metadata.annotations.as_ref().unwrap().contains_key("tabby.dev/ipv4pools"));
        assert!(p.metadata.labels.is_none(), "moved to the compact set");
        assert_eq!(p.labels.get("app"), Some("web"));
        assert!(p.metadata.managed_fields.is_none());
        assert!(p.metadata.uid.is_none() && p.metadata.resource_version.is_none(), "the cache's key has no copy");
        let status = p.status.unwrap();
        assert_eq!((status.phase.as_deref(), status.pod_ip.as_deref()), (Some("Running"), Some("10.0.0.1")));
        let spec = p.spec.unwrap();
        assert_eq!((spec.node_name.as_deref(), spec.containers.len()), (Some("n1"), 0), "no named port, no container");

        let mut n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"images": [{"names": ["pause"], "sizeBytes": 1}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.1.1"}]},
        }))
        .unwrap();
        lean_node(&mut n);
        assert_eq!(n.metadata.labels.unwrap()["zone"], "a");
        assert!(n.spec.is_none());
        let st = n.status.unwrap();
        assert!(st.images.is_none());
        assert_eq!(st.addresses.unwrap()[0].address, "192.168.1.1");
    }

    #[test]
    fn snapshot_finds_this_node_and_secrets() {
        let mut me = Node::default();
        me.metadata.name = Some("a".into());
        let mut sec = Secret::default();
        sec.metadata.name = Some("s".into());
        sec.data = Some([("k".to_string(), k8s_openapi::ByteString(b"pw".to_vec()))].into());
        let s = Snapshot {
            node: "a".into(),
            nodes: vec![Arc::new(me)],
            secrets: vec![Arc::new(sec)],
            ..Snapshot::default()
        };
        assert!(s.my_node().is_some());
        let sel = |name: &str, key: &str| SecretKeySelector { name: name.into(), key: key.into(), optional: None };
        assert_eq!(s.secret(&sel("s", "k")).as_deref(), Some("pw"));
        assert_eq!(s.secret(&sel("s", "x")), None);
    }
}
