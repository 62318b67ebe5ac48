//! Network policy: a [`Reconciler`] that compiles every policy for this node's pods (the model in
//! `tabby_api::policy::model`, shared with `kubectl tabby`), renders policy's section of table
//! `inet tabby` ([`render`]) and hands it to the table's one writer, which sends only what changed, in
//! one transaction, without reading the table back ([`crate::kernel::nft`]).
//!
//! | module | what |
//! |---|---|
//! | [`render`] | the compiled rules as nftables chains, sets and verdict maps; what each counter means |
//! | [`gate`] | the CNI server's hold: ADD answers once the new pod's chains are in |
//! | [`counters`] | per-rule packet counters from the kernel into `/metrics` |
//! | [`nflog`] | packets of Log rules, as JSON lines in the agent's log |
//!
//! A policy that cannot be read as written fails closed (its subject, one Deny rule per direction), and
//! the agent says so on the policy (condition `Valid`) and in an Event.

pub mod counters;
pub mod gate;
pub mod nflog;
pub mod render;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tabby_api::policy::cluster::{self, EndpointCache, ObjectRef, Objects};
use tabby_api::policy::model::{self, Cluster, Endpoint, Invalid, Ruleset, compile};

use k8s_openapi::api::core::v1::{Namespace, Node};
use tabby_api::ipam::IPAMBlock;
use tabby_api::pod::LeanPod;

use self::gate::Gate;
use self::render::Rendered;
use crate::facts::{PolicyFacts, Snapshot};
use crate::kernel::nft::Nft;
use crate::nat::SharedNft;
use crate::reconcile::{Condition, Local, Outcome, Reconciler, Removed, TeardownError};

/// NodeStatus RoutesReady reason while policy cannot be programmed.
pub const REASON_FAILED: &str = "PolicyProgrammingFailed";

/// What policy wants in the kernel, and what it reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Want {
    /// Shared: a pass that reuses the last compile hands out the same one, and comparing it with what
    /// was applied is a pointer comparison.
    pub rendered: Arc<Rendered>,
    pub invalid: Vec<(ObjectRef, Invalid)>,
    /// The newest CNI ADD included (the gate releases it once applied).
    pub generation: u64,
}

/// The shared attribution of counted rules (read by the counters and Log tasks): the last applied
/// [`Rendered`], handed over as a pointer.
pub type Attribution = Arc<Mutex<Arc<Rendered>>>;

/// The policy reconciler.
pub struct Policy {
    nft: SharedNft,
    resync: Duration,
    gate: Gate,
    attribution: Attribution,
    reporter: Option<conditions::Reporter>,
    /// How long the last `desired` took (the compile and render), in microseconds, for the apply's log line.
    compiled_us: AtomicU64,
    /// The last compile, what it read, and the endpoints of its Pods: one lock, since the memo is what
    /// keeps those Pods alive for the endpoint cache.
    last: Mutex<(Option<Memo>, EndpointCache)>,
    /// Compiles run (passes that reused the last one are not counted).
    compiles: AtomicU64,
    /// Passes that patched the last compile for other nodes' pods instead.
    patches: AtomicU64,
    /// Passes that compiled only the policies that changed.
    policy_patches: AtomicU64,
    /// Whether the last `desired` patched (for the apply's log line).
    patched: AtomicBool,
}

/// The objects a compile read, held (so no other object can take their addresses while they are
/// compared), the pods being added, and what came out. A pass that reads the very same objects (the
/// caches replace an object on every change) reuses it: passes run on every watch event of every kind and
/// every few seconds, and most change nothing policy reads.
struct Memo {
    node: String,
    pods: Vec<Arc<LeanPod>>,
    namespaces: Vec<Arc<Namespace>>,
    nodes: Vec<Arc<Node>>,
    blocks: Vec<Arc<IPAMBlock>>,
    policy: PolicyFacts,
    pending: Vec<Endpoint>,
    generation: u64,
    want: Want,
    /// The model and its compile behind `want`, kept so that another node's pod or a policy changing
    /// patches them.
    cluster: Cluster,
    ruleset: Ruleset,
}

/// The same objects, in the same order (a reordered cache is a miss, never a wrong hit).
fn same<T>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// At most this many pods changed between two passes are patched in; more take a full build.
const PATCH_LIMIT: usize = 64;
/// At most this many policy objects of a kind changed between two passes are compiled alone.
const POLICY_PATCH_LIMIT: usize = 16;

/// The objects of `old` that `new` no longer has and those it has instead (by address: a cache replaces
/// an object on every change), or `None` when more than `limit` changed.
fn changes<'a, T>(old: &'a [Arc<T>], new: &'a [Arc<T>], limit: usize) -> Option<(Vec<&'a T>, Vec<&'a T>)> {
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    if old.len() == new.len() {
        // The cache keeps its order while objects are only replaced: compare place by place.
        for (a, b) in old.iter().zip(new).filter(|(a, b)| !Arc::ptr_eq(a, b)) {
            if gone.len() == limit {
                return None;
            }
            gone.push(&**a);
            added.push(&**b);
        }
        return Some((gone, added));
    }
    let addr = |x: &Arc<T>| Arc::as_ptr(x) as usize;
    let before: std::collections::HashSet<usize> = old.iter().map(addr).collect();
    let after: std::collections::HashSet<usize> = new.iter().map(addr).collect();
    gone.extend(old.iter().filter(|x| !after.contains(&addr(x))).map(|x| &**x));
    added.extend(new.iter().filter(|x| !before.contains(&addr(x))).map(|x| &**x));
    (gone.len() + added.len() <= 2 * limit).then_some((gone, added))
}

impl Memo {
    fn hit(&self, s: &Snapshot, pending: &[Endpoint], generation: u64) -> bool {
        self.generation == generation && self.pending == pending && same(&self.pods, &s.pods) && self.same_but_pods(s)
    }

    /// Everything but the pods is as it was.
    fn same_but_pods(&self, s: &Snapshot) -> bool {
        let (p, q) = (&self.policy, &s.policy);
        self.same_but_policies_and_pods(s)
            && same(&p.k8s, &q.k8s)
            && same(&p.namespaced, &q.namespaced)
            && same(&p.global, &q.global)
            && same(&p.staged, &q.staged)
            && same(&p.staged_global, &q.staged_global)
            && same(&p.cnps, &q.cnps)
    }

    /// Everything but the pods and the policies is as it was.
    fn same_but_policies_and_pods(&self, s: &Snapshot) -> bool {
        let (p, q) = (&self.policy, &s.policy);
        self.node == s.node
            && same(&self.namespaces, &s.namespaces)
            && same(&self.nodes, &s.nodes)
            && same(&self.blocks, &s.blocks)
            && same(&p.sets, &q.sets)
            && same(&p.global_sets, &q.global_sets)
            && same(&p.tiers, &q.tiers)
            && same(&p.service_accounts, &q.service_accounts)
    }

    /// Compiles the changed policies alone when the pass differs from the last only in policy objects
    /// (created, edited, deleted): the kept model takes them in, [`model::recompile`] gives the endpoints
    /// they touch their programs again, and the section is rendered from that. `None` when that does not
    /// apply.
    fn patch_policies(&mut self, s: &Snapshot, pending: &[Endpoint], generation: u64) -> Option<Want> {
        if self.pending != pending
            || self.generation != generation
            || !same(&self.pods, &s.pods)
            || !self.same_but_policies_and_pods(s)
        {
            return None;
        }
        let (p, q) = (&self.policy, &s.policy);
        let mut gone: Vec<cluster::PolicyObject> = Vec::new();
        let mut added: Vec<cluster::PolicyObject> = Vec::new();
        macro_rules! kind {
            ($field:ident, $variant:ident) => {
                let (g, a) = changes(&p.$field, &q.$field, POLICY_PATCH_LIMIT)?;
                gone.extend(g.into_iter().map(cluster::PolicyObject::$variant));
                added.extend(a.into_iter().map(cluster::PolicyObject::$variant));
            };
        }
        kind!(k8s, Kubernetes);
        kind!(namespaced, Namespaced);
        kind!(global, Global);
        kind!(staged, StagedNamespaced);
        kind!(staged_global, StagedGlobal);
        kind!(cnps, Cluster);
        if gone.is_empty() && added.is_empty() {
            return None;
        }
        let changed: std::collections::BTreeSet<model::PolicyId> =
            gone.iter().chain(&added).map(|o| o.oref().id()).collect();
        // Every policy is read again (a few milliseconds at 1,000; keeping them parsed between passes
        // cost the agent 3 MiB at that scale), but only the changed ones are compiled.
        let mut invalid = Vec::new();
        for (r, policy, problem) in policies(&s.policy).policy_objects().filter_map(|o| o.convert(&self.cluster.tiers))
        {
            self.cluster.policies.extend(policy);
            invalid.extend(problem.map(|e| (r, e)));
        }
        invalid.sort_by(|a, b| a.0.cmp(&b.0));
        let me = s.node.as_str();
        model::recompile(&self.cluster, &mut self.ruleset, &changed, |e| e.node == me);
        self.cluster.policies = Vec::new();
        let rendered = Arc::new(render::render(&self.ruleset, &ifaces(&self.cluster, me)));
        self.want = Want { rendered, invalid, generation };
        self.policy = s.policy.clone();
        Some(self.want.clone())
    }

    /// Patches the last compile when the pass differs from it only in other nodes' pods (what most
    /// changes at scale are): their endpoints are replaced in the model, the sets they were or are in read
    /// again, and those sets rendered again; nothing else is compiled. `None` when that does not apply.
    fn patch(
        &mut self,
        s: &Snapshot,
        pending: &[Endpoint],
        generation: u64,
        cache: &mut EndpointCache,
    ) -> Option<Want> {
        // The pods the CNI server is adding stay pending for a while after their ADD: the same ones are
        // in the kept model already, merged into their endpoints (which are this node's, so never patched).
        if self.pending != pending || self.generation != generation || !self.same_but_pods(s) {
            return None;
        }
        let (gone, added) = changes(&self.pods, &s.pods, PATCH_LIMIT)?;
        let is_pending = |p: &&LeanPod| {
            pending.iter().any(|e| {
                p.metadata.name.as_deref() == Some(e.name.as_str())
                    && p.metadata.namespace.as_deref() == Some(e.namespace.as_str())
            })
        };
        if gone.iter().chain(&added).any(is_pending) {
            return None;
        }
        let me = s.node.as_str();
        let changes = cluster::patch_pods(&mut self.cluster, &objects(s), &gone, &added, cache, |e| e.node == me)?;
        let ids = model::repatch(&self.cluster, &mut self.ruleset, &changes);
        if !ids.is_empty() {
            self.want.rendered = Arc::new(render::patch(&self.want.rendered, &self.ruleset, &ids));
        }
        // The new Pods are the ones the cache's addresses are of from now on.
        self.pods = s.pods.clone();
        Some(self.want.clone())
    }
}

impl Policy {
    /// Policy through the shared writer `nft`, applied again every `resync`; `client` reports
    /// on policies (none in tests).
    pub fn new(nft: SharedNft, resync: Duration, gate: Gate, client: Option<Client>) -> Policy {
        Policy {
            nft,
            resync,
            gate,
            attribution: Attribution::default(),
            reporter: client.map(conditions::Reporter::new),
            compiled_us: AtomicU64::new(0),
            last: Mutex::new((None, EndpointCache::default())),
            compiles: AtomicU64::new(0),
            patches: AtomicU64::new(0),
            policy_patches: AtomicU64::new(0),
            patched: AtomicBool::new(false),
        }
    }

    pub fn attribution(&self) -> Attribution {
        self.attribution.clone()
    }
}

/// The host-side interface of a local endpoint (the plugin's naming).
pub fn iface(e: &Endpoint) -> String {
    tabby_wire::veth_name(&e.namespace, &e.name)
}

/// The snapshot's objects, as the model's builder (shared with `kubectl tabby policy trace`) reads them.
pub fn objects(s: &Snapshot) -> Objects<'_> {
    let p = &s.policy;
    Objects {
        pods: s.pods.iter().map(AsRef::as_ref).collect(),
        namespaces: s.namespaces.iter().map(AsRef::as_ref).collect(),
        service_accounts: p.service_accounts.iter().map(AsRef::as_ref).collect(),
        nodes: s.nodes.iter().map(AsRef::as_ref).collect(),
        blocks: s.blocks.iter().map(AsRef::as_ref).collect(),
        sets: p.sets.iter().map(AsRef::as_ref).collect(),
        global_sets: p.global_sets.iter().map(AsRef::as_ref).collect(),
        tiers: p.tiers.iter().map(AsRef::as_ref).collect(),
        ..policies(p)
    }
}

/// The policy objects alone (what a policy patch reads again).
fn policies(p: &PolicyFacts) -> Objects<'_> {
    Objects {
        k8s: p.k8s.iter().map(AsRef::as_ref).collect(),
        namespaced: p.namespaced.iter().map(AsRef::as_ref).collect(),
        global: p.global.iter().map(AsRef::as_ref).collect(),
        staged: p.staged.iter().map(AsRef::as_ref).collect(),
        staged_global: p.staged_global.iter().map(AsRef::as_ref).collect(),
        cnps: p.cnps.iter().map(AsRef::as_ref).collect(),
        ..Objects::default()
    }
}

/// What the facts and the pods being added ask for (pure but for `cache`, which keeps the endpoints of
/// unchanged Pods; its contract: the Pods of the last build stay alive until this one is done).
pub fn want(facts: &Snapshot, pending: &[Endpoint], generation: u64, cache: &mut EndpointCache) -> Want {
    full(facts, pending, generation, cache).0
}

/// [`want`], with the model and the compile it came from.
fn full(
    facts: &Snapshot,
    pending: &[Endpoint],
    generation: u64,
    cache: &mut EndpointCache,
) -> (Want, Cluster, Ruleset) {
    let built = cluster::build_with(&objects(facts), pending, cache);
    let me = facts.node.as_str();
    let rs = compile(&built.cluster, |e| e.node == me);
    let rendered = Arc::new(render::render(&rs, &ifaces(&built.cluster, me)));
    // The parsed policies go (a patch reads them again: kept, they cost 3 MiB at 1,000 policies); the
    // compile stays whole, so a patch recompiles only what changed.
    let cluster = Cluster { policies: Vec::new(), ..built.cluster };
    (Want { rendered, invalid: built.invalid, generation }, cluster, rs)
}

/// The interfaces of node `me`'s endpoints, by endpoint key.
fn ifaces(c: &Cluster, me: &str) -> std::collections::BTreeMap<String, String> {
    c.endpoints.iter().filter(|e| e.node == me).map(|e| (e.key(), iface(e))).collect()
}

impl Reconciler for Policy {
    const NAME: &'static str = "policy";
    type Desired = Want;

    fn desired(&self, facts: &Snapshot, _: &Local) -> Want {
        let started = Instant::now();
        let (pending, generation) = self.gate.pending();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (memo, endpoints) = &mut *last;
        if let Some(m) = memo.as_ref().filter(|m| m.hit(facts, &pending, generation)) {
            return m.want.clone();
        }
        if let Some(w) = memo.as_mut().and_then(|m| m.patch(facts, &pending, generation, endpoints)) {
            self.compiled_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            self.patches.fetch_add(1, Ordering::Relaxed);
            self.patched.store(true, Ordering::Relaxed);
            return w;
        }
        if let Some(w) = memo.as_mut().and_then(|m| m.patch_policies(facts, &pending, generation)) {
            self.compiled_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            self.policy_patches.fetch_add(1, Ordering::Relaxed);
            self.patched.store(true, Ordering::Relaxed);
            return w;
        }
        // The last model and compile go before the new ones are built, not after (at 1,000 policies and
        // 10,000 pods they are 7 MiB the build would otherwise add to the agent's height); their Pods stay
        // until the build is done, since the endpoint cache's addresses are of them.
        let _last_pods = memo.take().map(|m| m.pods);
        let (w, cluster, ruleset) = full(facts, &pending, generation, endpoints);
        self.compiled_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.compiles.fetch_add(1, Ordering::Relaxed);
        self.patched.store(false, Ordering::Relaxed);
        *memo = Some(Memo {
            node: facts.node.clone(),
            pods: facts.pods.clone(),
            namespaces: facts.namespaces.clone(),
            nodes: facts.nodes.clone(),
            blocks: facts.blocks.clone(),
            policy: facts.policy.clone(),
            pending,
            generation,
            want: w.clone(),
            cluster,
            ruleset,
        });
        w
    }

    async fn apply(&mut self, want: &Want, _: &mut Local) -> Outcome {
        let started = Instant::now();
        let section = want.rendered.section();
        let nft = self.nft.clone();
        let job = tokio::task::spawn_blocking(move || {
            // What the writer knows is read back every resync off this path (kernel::nft::verify);
            // after a failed commit the next one reads the kernel itself.
            let mut n = nft.lock().unwrap_or_else(|p| p.into_inner());
            n.stage(section);
            n.commit()
        });
        let out = match job.await {
            Ok(Ok(n)) => {
                // One line per pass that changed the kernel (as Felix's "applying updates" line): what
                // a change cost this node, the compile and render of every policy, then the nft write.
                if n > 0 {
                    let ms = |us: u64| us as f64 / 1000.0;
                    tracing::info!(
                        changes = n,
                        compile_ms = ms(self.compiled_us.load(Ordering::Relaxed)),
                        patched = self.patched.load(Ordering::Relaxed),
                        apply_ms = ms(started.elapsed().as_micros() as u64),
                        "policy programmed"
                    );
                }
                *self.attribution.lock().unwrap_or_else(|p| p.into_inner()) = want.rendered.clone();
                self.gate.applied(want.generation, true);
                Outcome::changed(n)
            }
            Ok(Err(e)) => {
                self.gate.applied(want.generation, false);
                Outcome::failed(Condition::Routes, REASON_FAILED, format!("programming network policy: {e}"))
            }
            Err(e) => Outcome::failed(Condition::Routes, REASON_FAILED, format!("policy task: {e}")),
        };
        if let Some(r) = &mut self.reporter {
            r.report(&want.invalid).await;
        }
        out
    }

    fn resync(&self) -> Duration {
        self.resync
    }

    async fn teardown(&mut self) -> Result<Removed, TeardownError> {
        let nft = self.nft.clone();
        let gone = tokio::task::spawn_blocking(move || {
            let mut n = nft.lock().unwrap_or_else(|p| p.into_inner());
            n.stage(Rendered::default().section());
            n.teardown(render::OWNER)
        });
        match gone.await {
            Ok(Ok(t)) => Ok(Removed { nft_table: t, ..Removed::default() }),
            Ok(Err(e)) => Err(TeardownError::new(Self::NAME, e)),
            Err(e) => Err(TeardownError::new(Self::NAME, e)),
        }
    }
}

/// A writer for tests and cleanup.
pub fn writer() -> SharedNft {
    Arc::new(Mutex::new(Nft::default()))
}

pub mod conditions {
    //! The `Valid` condition on policies the agent programs otherwise than written, and an Event.
    //! Every agent computes the same verdict from the same object, so a condition is written only when
    //! the object does not carry it yet.

    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::Client;
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter as EventReporter};
    use serde_json::json;
    use tabby_api::policy::CONDITION_VALID;
    use tabby_api::policy::cnp;
    use tabby_api::policy::model::{Invalid, Kind};

    use tabby_api::policy::cluster::ObjectRef;

    /// Reports invalid policies once per change of what is invalid.
    pub struct Reporter {
        client: Client,
        recorder: Recorder,
        reported: BTreeSet<(ObjectRef, String)>,
    }

    fn resource(kind: Kind) -> Option<(ApiResource, &'static str)> {
        let (g, v, k, plural) = match kind {
            Kind::Namespaced => ("tabby.dev", "v1", "NetworkPolicy", "networkpolicies"),
            Kind::Global => ("tabby.dev", "v1", "GlobalNetworkPolicy", "globalnetworkpolicies"),
            Kind::StagedNamespaced => ("tabby.dev", "v1", "StagedNetworkPolicy", "stagednetworkpolicies"),
            Kind::StagedGlobal => ("tabby.dev", "v1", "StagedGlobalNetworkPolicy", "stagedglobalnetworkpolicies"),
            Kind::Cluster => (cnp::GROUP, cnp::VERSION, "ClusterNetworkPolicy", "clusternetworkpolicies"),
            Kind::Kubernetes => ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
        };
        Some((ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural), k))
    }

    impl Reporter {
        pub fn new(client: Client) -> Reporter {
            let recorder =
                Recorder::new(client.clone(), EventReporter { controller: "tabby-agent".into(), instance: None });
            Reporter { client, recorder, reported: BTreeSet::new() }
        }

        /// Sets `Valid=False` on each invalid policy (and an Event), once per distinct problem.
        pub async fn report(&mut self, invalid: &[(ObjectRef, Invalid)]) {
            let now: BTreeSet<(ObjectRef, String)> = invalid.iter().map(|(r, e)| (r.clone(), e.to_string())).collect();
            for (r, msg) in now.difference(&self.reported.clone()) {
                let Some((ar, kind)) = resource(r.kind) else { continue };
                tracing::warn!(kind, namespace = ?r.namespace, name = %r.name, problem = %msg, "policy programmed fail-closed");
                let api: Api<DynamicObject> = match &r.namespace {
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                    None => Api::all_with(self.client.clone(), &ar),
                };
                if r.kind != Kind::Kubernetes {
                    let status = json!({"status": {"conditions": [{
                        "type": CONDITION_VALID, "status": "False", "reason": "InvalidField",
                        "message": format!("{msg} (programmed as deny-all until fixed)"),
                        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                    }]}});
                    if let Err(e) = api.patch_status(&r.name, &PatchParams::default(), &Patch::Merge(&status)).await {
                        tracing::debug!(error = %e, "setting the Valid condition");
                    }
                }
                let reference = ObjectReference {
                    api_version: Some(ar.api_version.clone()),
                    kind: Some(kind.into()),
                    name: Some(r.name.clone()),
                    namespace: r.namespace.clone(),
                    ..ObjectReference::default()
                };
                let event = Event {
                    type_: EventType::Warning,
                    reason: "InvalidPolicy".into(),
                    note: Some(format!("{msg}; programmed as deny-all for the pods it selects until fixed")),
                    action: "Program".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&event, &reference).await {
                    tracing::debug!(error = %e, "publishing an event");
                }
            }
            // Fixed since: Valid again.
            let still: BTreeSet<&ObjectRef> = now.iter().map(|(r, _)| r).collect();
            for r in self.reported.iter().map(|(r, _)| r).filter(|r| !still.contains(r) && r.kind != Kind::Kubernetes) {
                let Some((ar, _)) = resource(r.kind) else { continue };
                let api: Api<DynamicObject> = match &r.namespace {
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                    None => Api::all_with(self.client.clone(), &ar),
                };
                let status = json!({"status": {"conditions": [{
                    "type": CONDITION_VALID, "status": "True", "reason": "Programmed", "message": "",
                    "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                }]}});
                if let Err(e) = api.patch_status(&r.name, &PatchParams::default(), &Patch::Merge(&status)).await {
                    tracing::debug!(error = %e, "setting the Valid condition");
                }
            }
            self.reported = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use tokio::sync::Notify;

    use super::*;

    #[test]
    fn a_pass_over_the_same_objects_reuses_the_last_compile() {
        let p = Policy::new(writer(), Duration::from_secs(30), Gate::new("n1", Arc::new(Notify::new()), None), None);
        let pod: LeanPod =
            serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": []}, "status": {"podIPs": [{"ip": "10.0.0.1"}]}}))
            .unwrap();
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}))
        .unwrap();
        let mut s = Snapshot { node: "n1".into(), pods: vec![Arc::new(pod.clone())], ..Snapshot::default() };
        s.policy.k8s = vec![Arc::new(np)];
        let local = Local::default();
        let first = p.desired(&s, &local);
        assert!(!first.rendered.chains.is_empty());
        assert_eq!(p.desired(&s.clone(), &local), first);
        assert_eq!(p.compiles.load(Ordering::Relaxed), 1, "the same objects: no second compile");
        // The cache replaced the pod (an update): compiled again, even with the same content.
        s.pods = vec![Arc::new(pod)];
        assert_eq!(p.desired(&s, &local), first);
        assert_eq!(p.compiles.load(Ordering::Relaxed), 2);
        // A relabel changes what is wanted.
        let mut relabelled = (*s.pods[0]).clone();
        relabelled.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        s.policy.k8s = vec![];
        s.pods = vec![Arc::new(relabelled)];
        assert_ne!(p.desired(&s, &local), first);
        assert_eq!(p.compiles.load(Ordering::Relaxed), 3);
    }

    /// A pod of `node` in namespace `ns`, with labels, a named port maybe, and a state.
    fn pod(
        i: usize,
        ns: &str,
        node: &str,
        app: &str,
        role: &str,
        port: Option<(&str, &str, u16)>,
        state: u8,
    ) -> LeanPod {
        let ports: Vec<serde_json::Value> =
            port.map(|(n, proto, p)| json!({"name": n, "protocol": proto, "containerPort": p})).into_iter().collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": {"app": app, "role": role}},
            "spec": {"nodeName": node, "hostNetwork": state == 1, "serviceAccountName": if i.is_multiple_of(3) { "robot" } else { "default" },
                     "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": if state == 2 { "Succeeded" } else { "Running" },
                       "podIPs": [{"ip": format!("10.1.{}.{}", i / 200, i % 200 + 1)}, {"ip": format!("fd00::{i:x}")}]}
        }))
        .unwrap()
    }

    #[test]
    fn patching_for_other_nodes_pods_and_for_policies_renders_what_a_full_compile_does() {
        // A small xorshift: the same sequence every run.
        let seed = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15_u64);
        let rnd = |n: usize| {
            let mut x = seed.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seed.set(x);
            (x % n as u64) as usize
        };
        let (apps, roles, nodes, nss) =
            (["web", "db", "cache"], ["client", "server", "batch"], ["n1", "n2", "n3"], ["a", "b"]);
        let ports = [None, Some(("http", "TCP", 8080)), Some(("dns", "UDP", 53)), Some(("http", "TCP", 9090))];
        let make = |i: usize| {
            let state = [0, 0, 0, 0, 0, 0, 1, 2][rnd(8)];
            pod(i, nss[rnd(2)], nodes[rnd(3)], apps[rnd(3)], roles[rnd(3)], ports[rnd(4)], state)
        };
        let mut pods: Vec<Arc<LeanPod>> = (0..60).map(|i| Arc::new(make(i))).collect();
        fn j<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).unwrap()
        }
        let mut s = Snapshot { node: "n1".into(), ..Snapshot::default() };
        s.namespaces = vec![
            Arc::new(j(json!({"metadata": {"name": "a", "labels": {"team": "front"}}}))),
            Arc::new(j(json!({"metadata": {"name": "b", "labels": {"team": "back"}}}))),
        ];
        s.policy.service_accounts =
            vec![Arc::new(j(json!({"metadata": {"name": "robot", "namespace": "a", "labels": {"kind": "bot"}}})))];
        s.policy.k8s = vec![
            Arc::new(j(json!({"metadata": {"name": "web", "namespace": "a"}, "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                                      {"namespaceSelector": {"matchLabels": {"team": "back"}},
                                       "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}]}}],
                             "ports": [{"port": "http"}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "dns", "protocol": "UDP"}]}]}}))),
            Arc::new(j(json!({"metadata": {"name": "all", "namespace": "b"}, "spec": {
                "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "server"}}},
                                                         {"ipBlock": {"cidr": "10.1.0.0/24", "except": ["10.1.0.0/28"]}}]}]}}))),
        ];
        s.policy.global = vec![Arc::new(j(json!({"apiVersion": "tabby.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"}, "spec": {"selector": "role == 'batch'", "types": ["Ingress", "Egress"],
            "ingress": [{"action": "Allow", "source": {"selector": "app != 'web'", "notSelector": "role == 'client'"}}],
            "egress": [{"action": "Allow", "destination": {"selector": "has(app)", "ports": ["http"]}},
                       {"action": "Deny", "destination": {"serviceAccounts": {"selector": "kind == 'bot'"}}}]}})))];
        s.policy.global_sets = vec![Arc::new(j(json!({"apiVersion": "tabby.dev/v1", "kind": "GlobalNetworkSet",
            "metadata": {"name": "lb", "labels": {"role": "server"}}, "spec": {"nets": ["10.1.0.0/30", "192.0.2.0/24"]}})))];
        s.pods = pods.clone();
        let gate = Gate::new("n1", Arc::new(Notify::new()), None);
        let p = Policy::new(writer(), Duration::from_secs(30), gate.clone(), None);
        let local = Local::default();
        let mut next = 60;
        for step in 0..400 {
            if rnd(20) == 0 {
                // The CNI server adds a pod here (it stays pending for a while): an existing one's or a new one.
                let name = format!("p{}", rnd(next + 5));
                let ips = vec![format!("10.2.0.{}", rnd(250) + 1).parse().unwrap()];
                gate.announce(Endpoint {
                    namespace: nss[rnd(2)].into(),
                    name,
                    node: "n1".into(),
                    ips,
                    ..Endpoint::default()
                });
            }
            if rnd(4) == 0 {
                // A policy created, edited or deleted, alone in its pass.
                let n = rnd(6);
                let k8s = |n: usize| -> Arc<k8s_openapi::api::networking::v1::NetworkPolicy> {
                    let cidr = if rnd(8) == 0 { "10.1.0.0/33" } else { "10.1.0.0/26" };
                    Arc::new(j(json!({"metadata": {"name": format!("k{n}"), "namespace": nss[rnd(2)]}, "spec": {
                        "podSelector": if rnd(3) == 0 { json!({}) } else { json!({"matchLabels": {"app": apps[rnd(3)]}}) },
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": roles[rnd(3)]}}}, {"ipBlock": {"cidr": cidr}}],
                                     "ports": [{"port": (["http", "dns"][rnd(2)]), "protocol": (["TCP", "UDP"][rnd(2)])}]}],
                        "egress": if rnd(2) == 0 { json!([]) } else { json!([{"to": [{"podSelector": {"matchLabels": {"app": apps[rnd(3)]}}}]}]) },
                        "policyTypes": if rnd(2) == 0 { json!(["Ingress"]) } else { json!(["Ingress", "Egress"]) }}})))
                };
                match rnd(4) {
                    0 if !s.policy.k8s.is_empty() => {
                        s.policy.k8s.remove(rnd(s.policy.k8s.len()));
                    }
                    1 if !s.policy.k8s.is_empty() => {
                        let i = rnd(s.policy.k8s.len());
                        let name = s.policy.k8s[i].metadata.name.clone().unwrap_or_default();
                        let fresh = k8s(name[1..].parse().unwrap_or(n));
                        // Edited in place: the same name and namespace.
                        let mut edited = (*fresh).clone();
                        edited.metadata.namespace = s.policy.k8s[i].metadata.namespace.clone();
                        s.policy.k8s[i] = Arc::new(edited);
                    }
                    2 => {
                        let staged = rnd(3) == 0;
                        let g: tabby_api::policy::GlobalNetworkPolicy = j(json!({"apiVersion": "tabby.dev/v1",
                            "kind": "GlobalNetworkPolicy", "metadata": {"name": format!("g{n}")}, "spec": {
                            "tier": (["default", "default", "ghost"][rnd(3)]), "order": rnd(3) * 100,
                            "selector": (["all()", "app == 'db'", "role in {'client', 'batch'}"][rnd(3)]),
                            "types": ["Ingress"], "ingress": [{"action": (["Allow", "Deny", "Pass", "Log"][rnd(4)]),
                                "source": {"selector": (["role == 'server'", "has(app)"][rnd(2)])}}]}}));
                        if staged {
                            let sg: tabby_api::policy::StagedGlobalNetworkPolicy = j(
                                json!({"apiVersion": "tabby.dev/v1",
                                "kind": "StagedGlobalNetworkPolicy", "metadata": {"name": format!("s{n}")},
                                "spec": {"stagedAction": (["Set", "Delete"][rnd(2)]), "selector": "all()", "types": ["Ingress"],
                                         "ingress": [{"action": "Deny"}]}}),
                            );
                            s.policy.staged_global.retain(|x| x.metadata.name != sg.metadata.name);
                            s.policy.staged_global.push(Arc::new(sg));
                        } else {
                            s.policy.global.retain(|x| x.metadata.name != g.metadata.name);
                            s.policy.global.push(Arc::new(g));
                        }
                    }
                    _ => {
                        let fresh = k8s(10 + n);
                        s.policy.k8s.retain(|x| {
                            x.metadata.name != fresh.metadata.name || x.metadata.namespace != fresh.metadata.namespace
                        });
                        s.policy.k8s.push(fresh);
                    }
                }
                let got = p.desired(&s, &local);
                let (pending, generation) = gate.pending();
                let want = want(&s, &pending, generation, &mut EndpointCache::default());
                assert_eq!(*got.rendered, *want.rendered, "step {step}: a policy changed");
                assert_eq!(got.invalid, want.invalid, "step {step}");
                continue;
            }
            match rnd(10) {
                // Replaced in place (a relabel, a new phase, new ports): the common case.
                0..=6 => {
                    let i = rnd(pods.len());
                    let n = pods[i].metadata.name.as_deref().unwrap_or_default()[1..].parse().unwrap();
                    pods[i] = Arc::new(make(n));
                }
                7 if pods.len() > 5 => {
                    pods.remove(rnd(pods.len()));
                }
                _ => {
                    pods.push(Arc::new(make(next)));
                    next += 1;
                }
            }
            s.pods = pods.clone();
            let got = p.desired(&s, &local);
            let (pending, generation) = gate.pending();
            let want = want(&s, &pending, generation, &mut EndpointCache::default());
            assert_eq!(*got.rendered, *want.rendered, "step {step}");
            assert_eq!(got.invalid, want.invalid);
        }
        let (patched, compiled) = (p.patches.load(Ordering::Relaxed), p.compiles.load(Ordering::Relaxed));
        let policies = p.policy_patches.load(Ordering::Relaxed);
        assert!(
            patched > 60 && compiled > 30 && policies > 40,
            "every way ran: {patched} pod patches, {policies} policy patches, {compiled} compiles"
        );
    }
}
