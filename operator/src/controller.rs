//! The Installation controller: gathers facts, validates, renders, applies, and reports status. Every
//! object it owns is watched, so drift and deletions are corrected within seconds; a resync timer covers
//! anything missed. A reconcile that finds everything in place writes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tabby_api::condition as cond;
use tabby_api::installation::NodeCounts;
use tabby_api::names::{
    CLEANUP_FINALIZER, DEFAULT_NAME, MANAGED_BY_LABEL, NETWORK_STATUS_NAME, NODE_DAEMONSET, OPERATOR_FIELD_MANAGER,
    SYSTEM_NAMESPACE,
};
use tabby_api::{IPPool, Installation, InstallationStatus, NodeStatus, TabbyStatus, TabbyStatusStatus};

use crate::apply::{self, ApplyError, Outcome};
use crate::computed::{self, ClusterDefaults};
use crate::metrics::Metrics;
use crate::render::{self, Facts};
use crate::status::{self, Observed};
use crate::validate;

/// How often a reconcile runs with no event.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How long teardown waits for agent pods to exit (and clean their nodes) before removing RBAC anyway.
pub const TEARDOWN_POD_GRACE: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{0}: {1}")]
    Kube(&'static str, kube::Error),
}

/// What the controller needs besides the client.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The agent image unless the Installation says otherwise (the operator's own image).
    pub default_image: String,
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Metrics) -> Self {
        let reporter = Reporter { controller: OPERATOR_FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Context { recorder: Recorder::new(client.clone(), reporter), client, settings, metrics }
    }
}

/// Runs the controller until the process stops.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={OPERATOR_FIELD_MANAGER}"));
    let agent_pods = watcher::Config::default().labels(&format!("app.kubernetes.io/name={NODE_DAEMONSET}"));
    Controller::new(Api::<Installation>::all(client.clone()), watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(100)))
        .watches(Api::<DaemonSet>::namespaced(client.clone(), SYSTEM_NAMESPACE), managed.clone(), to_default)
        .watches(Api::<ConfigMap>::namespaced(client.clone(), SYSTEM_NAMESPACE), managed.clone(), to_default)
        .watches(Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM_NAMESPACE), managed.clone(), to_default)
        .watches(Api::<Role>::namespaced(client.clone(), SYSTEM_NAMESPACE), managed.clone(), to_default)
        .watches(Api::<RoleBinding>::namespaced(client.clone(), SYSTEM_NAMESPACE), managed.clone(), to_default)
        .watches(Api::<ClusterRole>::all(client.clone()), managed.clone(), to_default)
        .watches(Api::<ClusterRoleBinding>::all(client.clone()), managed.clone(), to_default)
        .watches(Api::<Namespace>::all(client.clone()), managed.clone(), to_default)
        .watches(Api::<IPPool>::all(client.clone()), managed, to_default)
        .watches(Api::<NodeStatus>::all(client.clone()), watcher::Config::default(), to_default)
        .watches(Api::<Pod>::namespaced(client.clone(), SYSTEM_NAMESPACE), agent_pods, to_default)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Every watched object maps to the one Installation.
fn to_default<K>(_: K) -> Option<ObjectRef<Installation>> {
    Some(ObjectRef::new(DEFAULT_NAME))
}

fn error_policy(_: Arc<Installation>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(inst: Arc<Installation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = if inst.metadata.deletion_timestamp.is_some() {
        teardown(&inst, &ctx).await
    } else {
        converge(&inst, &ctx).await
    };
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn kubeadm_pod_subnets(client: &Client) -> Vec<String> {
    // kubeadm records the cluster's pod CIDR(s); the default pool follows it, as Tigera's operator does.
    let Ok(Some(cm)) = Api::<ConfigMap>::namespaced(client.clone(), "kube-system").get_opt("kubeadm-config").await
    else {
        return Vec::new();
    };
    let text = cm.data.and_then(|d| d.get("ClusterConfiguration").cloned()).unwrap_or_default();
    let config: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
    config["networking"]["podSubnet"]
        .as_str()
        .map(|s| s.split(',').map(|c| c.trim().to_string()).collect())
        .unwrap_or_default()
}

async fn converge(inst: &Installation, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let installations: Api<Installation> = Api::all(client.clone());
    if !inst.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) {
        let patch = json!({"metadata": {"finalizers": inst.finalizers().iter().cloned().chain([CLEANUP_FINALIZER.to_string()]).collect::<Vec<_>>(), "resourceVersion": inst.resource_version()}});
        installations
            .patch(&inst.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::Kube("adding the cleanup finalizer", e))?;
        ctx.metrics.wrote("Installation");
        // The update triggers the next reconcile.
        return Ok(Action::await_change());
    }

    let pools: Vec<IPPool> = Api::<IPPool>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Kube("listing IPPools", e))?
        .items;
    let managed_pools = pools
        .iter()
        .filter(|p| p.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(OPERATOR_FIELD_MANAGER))
        .cloned()
        .collect();
    let defaults = ClusterDefaults { kubeadm_pod_subnets: kubeadm_pod_subnets(client).await };
    let effective = computed::effective(&inst.spec, &defaults);
    let invalid: Vec<String> = validate::installation(&effective, &pools).iter().map(ToString::to_string).collect();

    let mut observed = Observed { invalid: invalid.clone(), ..Default::default() };
    let mut written = Vec::new();
    if invalid.is_empty() {
        let rendered =
            render::render(&effective, &Facts { default_image: ctx.settings.default_image.clone(), managed_pools });
        let first = rendered
            .create_if_absent
            .iter()
            .map(|o| (o, false))
            .chain(rendered.unless_foreign.iter().map(|o| (o, true)));
        for (object, own) in first {
            let outcome = if own {
                apply::create_or_update_own(client, object).await
            } else {
                apply::create_if_absent(client, object).await
            };
            match outcome {
                Ok(Outcome::Unchanged) => {}
                Ok(outcome) => {
                    let target = apply::Target::of(object)?;
                    ctx.metrics.wrote(&target.resource.kind);
                    let verb = if outcome == Outcome::Created { "created" } else { "updated" };
                    written.push(format!("{verb} {}", target.describe()));
                }
                Err(e) => observed.apply_error = Some(e.to_string()),
            }
        }
        // A failed step stops the rest: the DaemonSet (last) never starts agents without their configuration.
        for object in &rendered.objects {
            if observed.apply_error.is_some() {
                break;
            }
            match apply::apply(client, object).await {
                Ok(Outcome::Unchanged) => {}
                Ok(outcome) => {
                    let target = apply::Target::of(object)?;
                    ctx.metrics.wrote(&target.resource.kind);
                    written.push(format!(
                        "{} {}",
                        if outcome == Outcome::Created { "created" } else { "updated" },
                        target.describe()
                    ));
                }
                Err(e) => {
                    observed.apply_error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    if !written.is_empty() {
        tracing::info!(changes = ?written, "applied");
        publish(ctx, inst, EventType::Normal, "Applied", &written.join(", ")).await;
    }

    observed.daemonset = Api::<DaemonSet>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get_opt(NODE_DAEMONSET)
        .await
        .map_err(|e| Error::Kube("reading the DaemonSet", e))?;
    let pods = Api::<Pod>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={NODE_DAEMONSET}")))
        .await
        .map_err(|e| Error::Kube("listing agent pods", e))?
        .items;
    observed.pod_failures = status::pod_failures(&pods, Timestamp::now());
    let node_statuses = Api::<NodeStatus>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Kube("listing NodeStatuses", e))?
        .items;
    observed.node_failures = status::node_failures(&node_statuses);
    let summary = status::summarize(&observed);
    let mtu = computed::network(&effective).mtu.or_else(|| status::smallest_mtu(&node_statuses));
    write_status(ctx, inst, &summary, effective, mtu).await?;

    // Unready pods turn into PodFailure after a grace period with no event of their own: look again then.
    let requeue = if summary.progressing.status || summary.degraded.status { Duration::from_secs(15) } else { RESYNC };
    Ok(Action::requeue(requeue))
}

async fn publish(ctx: &Context, inst: &Installation, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &inst.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event");
    }
}

async fn write_status(
    ctx: &Context,
    inst: &Installation,
    summary: &status::Summary,
    effective: tabby_api::InstallationSpec,
    mtu: Option<i32>,
) -> Result<(), Error> {
    let client = &ctx.client;
    let now = Time(Timestamp::now());
    let previous = inst.status.clone().unwrap_or_default();
    let conditions = status::conditions(
        &[
            (cond::READY, &summary.available),
            (cond::PROGRESSING, &summary.progressing),
            (cond::DEGRADED, &summary.degraded),
        ],
        &previous.conditions,
        inst.metadata.generation,
        &now,
    );
    let next = InstallationStatus {
        observed_generation: inst.metadata.generation,
        conditions,
        computed: Some(effective),
        mtu,
        nodes: Some(NodeCounts { desired: summary.desired, ready: summary.ready }),
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
    };
    if next != previous {
        let was_degraded =
            cond::find(&previous.conditions, cond::DEGRADED).map(|c| (c.status.clone(), c.message.clone()));
        let patch = json!({"apiVersion": "operator.tabby.dev/v1", "kind": "Installation", "status": next});
        Api::<Installation>::all(client.clone())
            .patch_status(&inst.name_any(), &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|e| Error::Kube("writing Installation status", e))?;
        ctx.metrics.wrote("Installation/status");
        if summary.degraded.status && was_degraded != Some(("True".into(), summary.degraded.message.clone())) {
            publish(ctx, inst, EventType::Warning, &summary.degraded.reason, &summary.degraded.message).await;
        }
        if summary.available.status && !cond::is_true(&previous.conditions, cond::READY) {
            publish(ctx, inst, EventType::Normal, "Ready", &summary.available.message).await;
        }
    }

    let statuses: Api<TabbyStatus> = Api::all(client.clone());
    let current = statuses.get_opt(NETWORK_STATUS_NAME).await.map_err(|e| Error::Kube("reading TabbyStatus", e))?;
    let previous = current.as_ref().and_then(|s| s.status.clone()).unwrap_or_default();
    let next = TabbyStatusStatus {
        conditions: status::conditions(
            &[
                (cond::AVAILABLE, &summary.available),
                (cond::PROGRESSING, &summary.progressing),
                (cond::DEGRADED, &summary.degraded),
            ],
            &previous.conditions,
            inst.metadata.generation,
            &now,
        ),
    };
    if current.is_none() {
        let object = json!({"apiVersion": "operator.tabby.dev/v1", "kind": "TabbyStatus",
                            "metadata": {"name": NETWORK_STATUS_NAME, "labels": {MANAGED_BY_LABEL: OPERATOR_FIELD_MANAGER}}, "spec": {}});
        apply::apply(client, &object).await?;
        ctx.metrics.wrote("TabbyStatus");
    }
    if current.is_none() || next != previous {
        let patch = json!({"apiVersion": "operator.tabby.dev/v1", "kind": "TabbyStatus", "status": next});
        statuses
            .patch_status(
                NETWORK_STATUS_NAME,
                &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| Error::Kube("writing TabbyStatus status", e))?;
        ctx.metrics.wrote("TabbyStatus/status");
    }
    Ok(())
}

/// Staged uninstall: the agents go first (each cleans its node on the way out), then what they needed
/// (RBAC, configuration, the namespace), then the finalizer. Every step is idempotent, so an operator that
/// restarts half-way just carries on; pools, IPAM and BGP settings stay, as they are the user's data.
async fn teardown(inst: &Installation, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    if !inst.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    let effective = computed::effective(&inst.spec, &ClusterDefaults::default());
    let rendered = render::render(
        &effective,
        &Facts { default_image: ctx.settings.default_image.clone(), managed_pools: Vec::new() },
    );
    let daemonset =
        rendered.objects.iter().find(|o| o["kind"] == "DaemonSet").cloned().expect("render() includes the DaemonSet");
    if apply::delete(client, &daemonset).await? {
        ctx.metrics.wrote("DaemonSet");
        publish(
            ctx,
            inst,
            EventType::Normal,
            "Uninstalling",
            "deleted DaemonSet tabby-node; agents clean their nodes as they stop",
        )
        .await;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={NODE_DAEMONSET}")))
        .await
        .map_err(|e| Error::Kube("listing agent pods", e))?
        .items;
    let deleting_for = inst
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| Timestamp::now().duration_since(t.0).as_secs().max(0) as u64)
        .unwrap_or(0);
    if !pods.is_empty() && deleting_for < TEARDOWN_POD_GRACE.as_secs() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if !pods.is_empty() {
        publish(
            ctx,
            inst,
            EventType::Warning,
            "Uninstalling",
            &format!(
                "{} agent pods still present after {}s; removing the rest anyway",
                pods.len(),
                TEARDOWN_POD_GRACE.as_secs()
            ),
        )
        .await;
    }
    // Everything else the operator made, newest first, except the pools (user data).
    for object in rendered.objects.iter().rev().filter(|o| o["kind"] != "IPPool" && o["kind"] != "DaemonSet") {
        if apply::delete(client, object).await? {
            ctx.metrics.wrote(object["kind"].as_str().unwrap_or("?"));
        }
    }
    let status = json!({"apiVersion": "operator.tabby.dev/v1", "kind": "TabbyStatus", "metadata": {"name": NETWORK_STATUS_NAME}});
    if apply::delete(client, &status).await? {
        ctx.metrics.wrote("TabbyStatus");
    }
    let finalizers: Vec<String> = inst.finalizers().iter().filter(|f| *f != CLEANUP_FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": inst.resource_version()}});
    match Api::<Installation>::all(client.clone())
        .patch(&inst.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(Error::Kube("removing the cleanup finalizer", e)),
    }
    ctx.metrics.wrote("Installation");
    tracing::info!("uninstalled");
    Ok(Action::await_change())
}
