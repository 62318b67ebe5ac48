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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tabby_api::policy::cluster::{self, ObjectRef, Objects};
use tabby_api::policy::model::{Endpoint, Invalid, compile};

use self::gate::Gate;
use self::render::{Attr, Rendered};
use crate::facts::Snapshot;
use crate::kernel::nft::Nft;
use crate::nat::SharedNft;
use crate::reconcile::{Condition, Local, Outcome, Reconciler, Removed, TeardownError};

/// NodeStatus RoutesReady reason while policy cannot be programmed.
pub const REASON_FAILED: &str = "PolicyProgrammingFailed";

/// What policy wants in the kernel, and what it reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Want {
    pub rendered: Rendered,
    pub invalid: Vec<(ObjectRef, Invalid)>,
    /// The newest CNI ADD included (the gate releases it once applied).
    pub generation: u64,
}

/// The shared attribution of counted rules (read by the counters task).
pub type Attribution = Arc<Mutex<BTreeMap<(String, String), Attr>>>;

/// The policy reconciler.
pub struct Policy {
    nft: SharedNft,
    resync: Duration,
    gate: Gate,
    attribution: Attribution,
    reporter: Option<conditions::Reporter>,
    /// How long the last `desired` took (the compile and render), in microseconds, for the apply's log line.
    compiled_us: AtomicU64,
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
        k8s: p.k8s.iter().map(AsRef::as_ref).collect(),
        namespaced: p.namespaced.iter().map(AsRef::as_ref).collect(),
        global: p.global.iter().map(AsRef::as_ref).collect(),
        staged: p.staged.iter().map(AsRef::as_ref).collect(),
        staged_global: p.staged_global.iter().map(AsRef::as_ref).collect(),
        sets: p.sets.iter().map(AsRef::as_ref).collect(),
        global_sets: p.global_sets.iter().map(AsRef::as_ref).collect(),
        tiers: p.tiers.iter().map(AsRef::as_ref).collect(),
        cnps: p.cnps.iter().map(AsRef::as_ref).collect(),
    }
}

/// What the facts and the pods being added ask for (pure).
pub fn want(facts: &Snapshot, pending: &[Endpoint], generation: u64) -> Want {
    let built = cluster::build(&objects(facts), pending);
    let me = facts.node.as_str();
    let rs = compile(&built.cluster, |e| e.node == me);
    let ifaces = built.cluster.endpoints.iter().filter(|e| e.node == me).map(|e| (e.key(), iface(e))).collect();
    Want { rendered: render::render(&rs, &ifaces), invalid: built.invalid, generation }
}

impl Reconciler for Policy {
    const NAME: &'static str = "policy";
    type Desired = Want;

    fn desired(&self, facts: &Snapshot, _: &Local) -> Want {
        let started = Instant::now();
        let (pending, generation) = self.gate.pending();
        let w = want(facts, &pending, generation);
        self.compiled_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
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
                        apply_ms = ms(started.elapsed().as_micros() as u64),
                        "policy programmed"
                    );
                }
                *self.attribution.lock().unwrap_or_else(|p| p.into_inner()) = want.rendered.attribution.clone();
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
            Kind::Cluster => ("policy.networking.k8s.io", "v1alpha2", "ClusterNetworkPolicy", "clusternetworkpolicies"),
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
