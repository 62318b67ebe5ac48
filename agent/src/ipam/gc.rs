//! Finding and releasing leaked addresses, by the rule `kubectl tabby ipam check` reports them with
//! ([`tabby_api::ipam::leak`]).
//!
//! - [`release_local_leaks`]: once at agent start, this node's allocations whose pod is not on this node
//!   and whose host veth is absent are released after the grace period, each re-checked first.
//! - [`run_cluster_gc`]: the agent holding the `tabby-ipam-gc` Lease (coordination.k8s.io) periodically
//!   releases leaked allocations (their pod is gone, finished, elsewhere or has another address; or, for
//!   allocations without a pod, their node is gone), deletes
//!   empty blocks and affinities of deleted nodes and handles no block refers to. Every candidate must look
//!   leaked for the whole grace period and is re-checked against the API right before it is released.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectList, ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tabby_api::ipam::leak::{self, Found, Holder, PodFacts, leak};
use tabby_api::ipam::{BlockAffinity, IPAMBlock, IPAMHandle, IPPool, block, block_affinity_name};
use tabby_api::pod::LeanPod;
use tabby_wire::veth_name;

use super::allocator::{Allocator, ReleaseSel};
use super::store::{self, handle_object_name};

/// Seconds a GC lease is valid without renewal.
const LEASE_SECONDS: i32 = 30;

/// Whether the host side of a pod's veth exists in this network namespace.
fn attachment_present(ns: &str, pod: &str) -> bool {
    std::path::Path::new(&format!("/proc/sys/net/ipv4/conf/{}", veth_name(ns, pod))).exists()
}

/// The re-check right before a release: whether `h` is still leaked by the API's current word (its
/// pod or node read again). Unsure (the API did not answer): no.
async fn still_leaked(client: &Client, h: &Holder<'_>, pools: &[IpNet]) -> bool {
    match (h.pod(), h.node) {
        (Some((ns, pod)), _) => match Api::<LeanPod>::namespaced(client.clone(), ns).get_opt(pod).await {
            Ok(p) => leak(h, p.as_ref().map(PodFacts::of).as_ref(), |_| true, in_pools(pools)).is_some(),
            Err(_) => false,
        },
        (None, Some(node)) => Api::<Node>::all(client.clone()).get_opt(node).await.is_ok_and(|n| n.is_none()),
        (None, None) => false,
    }
}

/// Whether an address lies in one of `pools`.
fn in_pools(pools: &[IpNet]) -> impl Fn(IpAddr) -> bool + '_ {
    move |ip| pools.iter().any(|p| p.contains(&ip))
}

fn pool_nets(pools: &[IPPool]) -> Vec<IpNet> {
    pools.iter().filter_map(|p| block::parse_cidr(&p.spec.cidr)).collect()
}

/// At start: releases this node's allocations with no pod on this node and no veth, after `grace`.
pub async fn release_local_leaks(alloc: Allocator, client: Client, pods: Store<LeanPod>, grace: Duration) {
    // The cache holds every pod (trimmed: node, phase, addresses): a pod missing from it is gone, one on
    // another node has moved. Nodes exist (this one does).
    let candidates = |alloc: &Allocator| -> Vec<(IpNet, usize, Option<String>, String, String)> {
        let mut out = Vec::new();
        for b in alloc.blocks() {
            let Some(cidr) = block::parse_cidr(&b.spec.cidr) else { continue };
            for a in block::allocated(&cidr, &b.spec) {
                let h = Holder::of(&a, b.spec.affinity.as_deref());
                let Some((ns, pod)) = h.pod() else { continue };
                let facts = pods.get(&ObjectRef::new(pod).within(ns)).map(|p| PodFacts::of(&p));
                if leak(&h, facts.as_ref(), |_| true, |_| false).is_some() && !attachment_present(ns, pod) {
                    out.push((cidr, a.ordinal, a.handle().map(str::to_string), ns.to_string(), pod.to_string()));
                }
            }
        }
        out
    };
    let first: BTreeSet<(IpNet, usize, Option<String>)> =
        candidates(&alloc).into_iter().map(|(c, o, h, _, _)| (c, o, h)).collect();
    if first.is_empty() {
        return;
    }
    tracing::info!(
        count = first.len(),
        grace_s = grace.as_secs(),
        "allocations without a pod; releasing after the grace period"
    );
    tokio::time::sleep(grace).await;
    let node = alloc.node().to_string();
    let mut exact = Vec::new();
    for (c, o, h, ns, pod) in candidates(&alloc) {
        let holder =
            Holder { ip: block::addr_at(&c, o), namespace: Some(&ns), pod: Some(&pod), node: Some(node.as_str()) };
        if first.contains(&(c, o, h.clone())) && still_leaked(&client, &holder, &[]).await {
            exact.push((c, o, h));
        }
    }
    if exact.is_empty() {
        return;
    }
    match alloc.release(ReleaseSel::Exact(exact)).await {
        Ok(n) => tracing::info!(released = n, "released leaked allocations of this node"),
        Err(e) => tracing::warn!(error = %e, "releasing leaked allocations failed"),
    }
}

/// Acquires or renews the GC lease; true while this agent holds it.
pub async fn acquire_lease(client: &Client, namespace: &str, name: &str, me: &str) -> bool {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let now = MicroTime(Timestamp::now());
    let spec = |transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(now.clone()),
        renew_time: Some(now.clone()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(name).await {
        Ok(None) => {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, spec: Some(spec(0)) };
            api.create(&PostParams::default(), &lease).await.is_ok()
        }
        Ok(Some(mut lease)) => {
            let cur = lease.spec.clone().unwrap_or_default();
            let mine = cur.holder_identity.as_deref() == Some(me);
            let expired = cur.renew_time.as_ref().is_none_or(|t| {
                let age = Timestamp::now().duration_since(t.0);
                age.as_secs() > i64::from(cur.lease_duration_seconds.unwrap_or(LEASE_SECONDS))
            });
            if !mine && !expired {
                return false;
            }
            let mut next = spec(cur.lease_transitions.unwrap_or(0) + i32::from(!mine));
            if mine {
                next.acquire_time = cur.acquire_time;
            }
            lease.spec = Some(next);
            api.replace(name, &PostParams::default(), &lease).await.is_ok()
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the GC lease failed");
            false
        }
    }
}

/// Where a garbage collector pass remembers since when (and since which pass) each candidate has
/// looked leaked.
#[derive(Default)]
pub struct GcState {
    seen: HashMap<String, (Instant, u64)>,
    pass: u64,
}

impl GcState {
    /// Starts a pass.
    fn next_pass(&mut self) {
        self.pass += 1;
    }

    /// True once `key` has looked leaked for `grace` and in an earlier pass as well: a pass judges
    /// by the blocks it listed at its start, so an allocation committed meanwhile (its handle written
    /// before its block) looks leaked to that pass only. Every key not offered in a pass is forgotten
    /// by [`GcState::retain`].
    fn ripe(&mut self, key: String, grace: Duration, offered: &mut HashSet<String>) -> bool {
        offered.insert(key.clone());
        let pass = self.pass;
        let (since, first) = *self.seen.entry(key).or_insert_with(|| (Instant::now(), pass));
        since.elapsed() >= grace && first < pass
    }

    fn retain(&mut self, offered: &HashSet<String>) {
        self.seen.retain(|k, _| offered.contains(k));
    }
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub released: u32,
    pub blocks_deleted: u32,
    pub affinities_deleted: u32,
    pub handles_deleted: u32,
}

/// Page sizes of a pass's lists: a cluster's worth of pods, blocks or handles at once would be this
/// agent's largest allocation by far (measured with `make bench-routing`, scale: 10k pods and handles,
/// 157 blocks: the lease holder peaked at 105 MiB listing each kind whole, 37 MiB with these pages).
/// A block holds an attribute per address, so its page is the smallest.
const POD_PAGE: u32 = 100;
const HANDLE_PAGE: u32 = 100;
const BLOCK_PAGE: u32 = 10;

/// Turns `lp` to the page after `list`; false when `list` was the last one.
fn next_page<K>(lp: &mut ListParams, list: &ObjectList<K>) -> bool
where
    K: Clone,
{
    match list.metadata.continue_.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => {
            *lp = lp.clone().continue_token(c);
            true
        }
        None => false,
    }
}

/// What a pass knows of the cluster for the leak rule: every pod (as the rule reads it), node and pool.
#[derive(Debug, Default)]
pub struct ClusterView {
    pods: HashMap<(String, String), PodFacts>,
    nodes: HashSet<String>,
    pools: Vec<IpNet>,
}

impl ClusterView {
    pub fn new(nodes: impl IntoIterator<Item = String>, pools: &[IPPool]) -> ClusterView {
        ClusterView { pods: HashMap::new(), nodes: nodes.into_iter().collect(), pools: pool_nets(pools) }
    }

    pub fn add_pods<'a>(&mut self, pods: impl IntoIterator<Item = &'a LeanPod>) {
        self.pods
            .extend(pods.into_iter().map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), PodFacts::of(p))));
    }

    /// The leaked allocations of `b` ([`tabby_api::ipam::leak::in_block`]).
    pub fn leaked<'a>(&self, b: &'a IPAMBlock) -> Vec<Found<'a>> {
        let Some(cidr) = block::parse_cidr(&b.spec.cidr) else { return Vec::new() };
        leak::in_block(
            &cidr,
            &b.spec,
            |ns, p| self.pods.get(&(ns.to_string(), p.to_string())).cloned(),
            |n| self.nodes.contains(n),
            in_pools(&self.pools),
        )
    }

    fn has_node(&self, n: &str) -> bool {
        self.nodes.contains(n)
    }
}

/// Lists every pod into `view`, `POD_PAGE` at a time.
async fn add_pods(api: &Api<LeanPod>, view: &mut ClusterView) -> Result<(), kube::Error> {
    let mut lp = ListParams::default().limit(POD_PAGE);
    loop {
        let page = api.list(&lp).await?;
        let more = next_page(&mut lp, &page);
        view.add_pods(&page.items);
        if !more {
            return Ok(());
        }
    }
}

/// One cluster-wide pass (the caller holds the lease).
pub async fn gc_pass(client: &Client, state: &mut GcState, grace: Duration) -> Result<GcReport, kube::Error> {
    state.next_pass();
    let blocks_api: Api<IPAMBlock> = Api::all(client.clone());
    // Names only for nodes; pods, blocks and handles page by page, keeping only what the pass needs.
    let nodes = Api::<Node>::all(client.clone()).list_metadata(&ListParams::default()).await?;
    let pools = Api::<IPPool>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut view = ClusterView::new(nodes.into_iter().map(|n| n.name_any()), &pools);
    add_pods(&Api::<LeanPod>::all(client.clone()), &mut view).await?;
    let mut report = GcReport::default();
    let mut offered = HashSet::new();
    let mut referenced: HashSet<String> = HashSet::new();
    // Block CIDR → affinity, for the affinity check below.
    let mut owners: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut lp = ListParams::default().limit(BLOCK_PAGE);
    loop {
        let page = blocks_api.list(&lp).await?;
        let more = next_page(&mut lp, &page);
        for b in &page.items {
            owners.insert(b.spec.cidr.clone(), b.spec.affinity.clone());
            let Some(cidr) = block::parse_cidr(&b.spec.cidr) else { continue };
            let owner =
                b.spec.affinity.as_deref().and_then(|a| a.strip_prefix("host:")).unwrap_or_default().to_string();
            referenced.extend(block::allocated(&cidr, &b.spec).iter().filter_map(|a| a.handle()).map(str::to_string));
            let mut release: Vec<(usize, Option<String>)> = Vec::new();
            for f in view.leaked(b) {
                let (ord, handle) = (f.allocation.ordinal, f.allocation.handle());
                let key = format!("alloc/{cidr}/{ord}/{handle:?}");
                // Re-check against the API right before releasing.
                if state.ripe(key, grace, &mut offered) && still_leaked(client, &f.holder, &view.pools).await {
                    release.push((ord, handle.map(str::to_string)));
                }
            }
            if !release.is_empty() {
                let n = store::release_in_block(&blocks_api, &cidr, |o, a| {
                    release.iter().any(|(ro, rh)| *ro == o && *rh == a.handle_id)
                })
                .await
                .unwrap_or(0);
                report.released += n;
                tracing::info!(block = %cidr, released = n, "released leaked allocations");
            }
            // Empty blocks of deleted nodes go, with their affinities.
            if !owner.is_empty() && !view.has_node(&owner) {
                let Some(fresh) = blocks_api.get_opt(&b.name_any()).await? else { continue };
                if fresh.spec.allocations.iter().all(Option::is_none)
                    && state.ripe(format!("block/{cidr}"), grace, &mut offered)
                    && store::delete_block_if_unchanged(&blocks_api, &fresh).await.unwrap_or(false)
                {
                    report.blocks_deleted += 1;
                    let aff: Api<BlockAffinity> = Api::all(client.clone());
                    if aff.delete(&block_affinity_name(&owner, &b.spec.cidr), &DeleteParams::default()).await.is_ok() {
                        report.affinities_deleted += 1;
                    }
                }
            }
        }
        if !more {
            break;
        }
    }
    // Affinities of deleted nodes whose block is gone or someone else's.
    let aff_api: Api<BlockAffinity> = Api::all(client.clone());
    for a in aff_api.list(&ListParams::default()).await? {
        let owned =
            owners.get(&a.spec.cidr).is_some_and(|o| o.as_deref() == Some(format!("host:{}", a.spec.node).as_str()));
        if !view.has_node(&a.spec.node)
            && !owned
            && state.ripe(format!("affinity/{}", a.name_any()), grace, &mut offered)
            && aff_api.delete(&a.name_any(), &DeleteParams::default()).await.is_ok()
        {
            report.affinities_deleted += 1;
        }
    }
    // Handles no block refers to.
    let handles: Api<IPAMHandle> = Api::all(client.clone());
    let mut lp = ListParams::default().limit(HANDLE_PAGE);
    loop {
        let page = handles.list(&lp).await?;
        let more = next_page(&mut lp, &page);
        for h in page.items {
            if !referenced.contains(&h.spec.handle_id)
                && state.ripe(format!("handle/{}", h.spec.handle_id), grace, &mut offered)
                && handles.delete(&handle_object_name(&h.spec.handle_id), &DeleteParams::default()).await.is_ok()
            {
                report.handles_deleted += 1;
            }
        }
        if !more {
            break;
        }
    }
    state.retain(&offered);
    Ok(report)
}

/// Competes for the GC lease forever; the holder runs [`gc_pass`] every `interval`.
pub async fn run_cluster_gc(client: Client, me: String, namespace: String, interval: Duration, grace: Duration) {
    let mut state = GcState::default();
    let tick = interval.min(Duration::from_secs(10));
    let mut last: Option<Instant> = None;
    loop {
        if acquire_lease(&client, &namespace, crate::config::GC_LEASE_NAME, &me).await
            && last.is_none_or(|l| l.elapsed() >= interval)
        {
            last = Some(Instant::now());
            let r = gc_pass(&client, &mut state, grace).await;
            let took = last.map(|l| l.elapsed()).unwrap_or_default();
            if let Some(l) = last {
                crate::reconcile::observe("ipam-gc", l, r.is_ok());
            }
            match r {
                Ok(r) if r != GcReport::default() => tracing::info!(
                    released = r.released,
                    blocks_deleted = r.blocks_deleted,
                    affinities_deleted = r.affinities_deleted,
                    handles_deleted = r.handles_deleted,
                    "IPAM garbage collection"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "IPAM garbage collection failed"),
            }
            tracing::debug!(took_ms = took.as_millis() as u64, "IPAM garbage collection pass done");
        }
        tokio::time::sleep(tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_ripens_only_when_an_earlier_pass_saw_it_too() {
        let mut st = GcState::default();
        let mut offered = HashSet::new();
        st.next_pass();
        assert!(!st.ripe("handle/h".into(), Duration::ZERO, &mut offered), "first sighting: not yet");
        st.retain(&offered);
        st.next_pass();
        let mut offered = HashSet::new();
        assert!(st.ripe("handle/h".into(), Duration::ZERO, &mut offered), "still leaked a pass later");
        assert!(!st.ripe("handle/new".into(), Duration::ZERO, &mut offered));
        // A candidate not offered in a pass is forgotten and starts over.
        st.retain(&HashSet::new());
        st.next_pass();
        assert!(!st.ripe("handle/h".into(), Duration::ZERO, &mut HashSet::new()));
        // The grace period still applies.
        st.next_pass();
        assert!(!st.ripe("handle/h".into(), Duration::from_secs(3600), &mut HashSet::new()));
    }

    #[test]
    fn leaks_agree_with_the_shared_table() {
        for case in tabby_testkit::cases::leak_cases() {
            let mut view = ClusterView::new(case.nodes.clone(), &case.pools());
            let pods: Vec<LeanPod> = case.pods().iter().map(LeanPod::from).collect();
            view.add_pods(&pods);
            let blocks = case.blocks();
            let mut leaked: Vec<std::net::IpAddr> =
                blocks.iter().flat_map(|b| view.leaked(b)).map(|f| f.allocation.ip).collect();
            leaked.sort();
            let mut want = case.leaked.clone();
            want.sort();
            assert_eq!(leaked, want, "{}", case.name);
        }
    }
}
