//! Status: a pure summary of what the operator observed, turned into conditions for `TabbyStatus/network`
//! (Available, Progressing, Degraded) and `Installation.status` (the same, with Available named Ready).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tabby_api::NodeStatus;
use tabby_api::condition::{self as cond, Condition};

/// How long an agent pod may stay unready before the network counts as degraded.
pub const UNREADY_GRACE_SECONDS: i64 = 60;

/// What one reconcile saw.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Validation errors; when present nothing was applied.
    pub invalid: Vec<String>,
    /// Why applying failed, if it did.
    pub apply_error: Option<String>,
    /// The agent DaemonSet as the API server has it.
    pub daemonset: Option<DaemonSet>,
    /// Nodes whose agent pod crash-loops, cannot pull its image, or stays unready.
    pub pod_failures: Vec<String>,
    /// Nodes whose NodeStatus reports Ready=False.
    pub node_failures: Vec<String>,
}

/// One condition's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl State {
    fn new(status: bool, reason: &str, message: impl Into<String>) -> Self {
        State { status, reason: reason.to_string(), message: message.into() }
    }
}

/// Available, Progressing, Degraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub available: State,
    pub progressing: State,
    pub degraded: State,
    /// Agent pods that should run, and that are ready.
    pub desired: i32,
    pub ready: i32,
}

/// Summarizes an observation.
pub fn summarize(o: &Observed) -> Summary {
    let ds_status = o.daemonset.as_ref().and_then(|d| d.status.clone()).unwrap_or_default();
    let desired = ds_status.desired_number_scheduled;
    let ready = ds_status.number_ready;

    let degraded = if !o.invalid.is_empty() {
        State::new(
            true,
            cond::REASON_INVALID_CONFIGURATION,
            format!("Invalid Installation provided: {}", o.invalid.join("; ")),
        )
    } else if let Some(e) = &o.apply_error {
        State::new(true, cond::REASON_RESOURCE_UPDATE_ERROR, e.clone())
    } else if !o.pod_failures.is_empty() {
        State::new(true, cond::REASON_POD_FAILURE, format!("agent pods failing on: {}", o.pod_failures.join(", ")))
    } else if !o.node_failures.is_empty() {
        State::new(
            true,
            cond::REASON_POD_FAILURE,
            format!("nodes report the network not ready: {}", o.node_failures.join(", ")),
        )
    } else {
        State::new(false, cond::REASON_ALL_OBJECTS_AVAILABLE, "")
    };

    let progressing = match &o.daemonset {
        _ if !o.invalid.is_empty() => State::new(false, cond::REASON_INVALID_CONFIGURATION, ""),
        None => State::new(true, cond::REASON_RESOURCE_NOT_READY, "DaemonSet tabby-node is being created"),
        Some(ds) => {
            let generation = ds.metadata.generation.unwrap_or(0);
            let observed = ds_status.observed_generation.unwrap_or(0);
            let updated = ds_status.updated_number_scheduled.unwrap_or(0);
            let unavailable = ds_status.number_unavailable.unwrap_or(0);
            if observed < generation {
                State::new(true, cond::REASON_RESOURCE_NOT_READY, "DaemonSet tabby-node: update not yet observed")
            } else if updated < desired {
                State::new(
                    true,
                    cond::REASON_RESOURCE_NOT_READY,
                    format!("DaemonSet tabby-node: {updated} of {desired} agents updated"),
                )
            } else if unavailable > 0 {
                State::new(
                    true,
                    cond::REASON_RESOURCE_NOT_READY,
                    format!("DaemonSet tabby-node: {unavailable} of {desired} agents unavailable"),
                )
            } else {
                State::new(false, cond::REASON_ALL_OBJECTS_AVAILABLE, "")
            }
        }
    };

    let available = if degraded.status && degraded.reason == cond::REASON_INVALID_CONFIGURATION {
        State::new(false, cond::REASON_INVALID_CONFIGURATION, "the Installation is invalid; see Degraded")
    } else if o.daemonset.is_none() {
        State::new(false, cond::REASON_RESOURCE_NOT_READY, "DaemonSet tabby-node does not exist yet")
    } else if progressing.status {
        State::new(false, cond::REASON_RESOURCE_NOT_READY, progressing.message.clone())
    } else if degraded.status {
        State::new(false, &degraded.reason, degraded.message.clone())
    } else {
        State::new(true, cond::REASON_ALL_OBJECTS_AVAILABLE, format!("{ready} of {desired} nodes ready"))
    };
    Summary { available, progressing, degraded, desired, ready }
}

/// Builds the conditions list, keeping each condition's lastTransitionTime while its status is unchanged.
pub fn conditions(
    states: &[(&str, &State)],
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    states
        .iter()
        .map(|(type_, state)| {
            let status = if state.status { "True" } else { "False" }.to_string();
            let since = cond::find(previous, type_)
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: type_.to_string(),
                status,
                reason: state.reason.clone(),
                message: state.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Nodes whose agent pod is failing: waiting in a crash or image-pull back-off, or unready for longer than
/// [`UNREADY_GRACE_SECONDS`].
pub fn pod_failures(pods: &[Pod], now: Timestamp) -> Vec<String> {
    let mut nodes = Vec::new();
    for pod in pods {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "(unscheduled)".into());
        let Some(status) = &pod.status else { continue };
        let crashing = status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .any(|c| {
                c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref()).is_some_and(|r| {
                    matches!(
                        r,
                        "CrashLoopBackOff"
                            | "ImagePullBackOff"
                            | "ErrImagePull"
                            | "CreateContainerConfigError"
                            | "InvalidImageName"
                    )
                })
            });
        let unready_too_long = status.conditions.iter().flatten().any(|c| {
            c.type_ == "Ready"
                && c.status == "False"
                && c.last_transition_time
                    .as_ref()
                    .is_some_and(|t| now.duration_since(t.0).as_secs() > UNREADY_GRACE_SECONDS)
        });
        if crashing || unready_too_long {
            nodes.push(node);
        }
    }
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Nodes whose NodeStatus says Ready=False.
pub fn node_failures(statuses: &[NodeStatus]) -> Vec<String> {
    let mut nodes: Vec<String> = statuses
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| cond::find(&st.conditions, cond::READY))
                .is_some_and(|c| c.status == "False")
        })
        .map(|s| s.spec.node.clone())
        .collect();
    nodes.sort();
    nodes
}

/// The smallest MTU the nodes report.
pub fn smallest_mtu(statuses: &[NodeStatus]) -> Option<i32> {
    statuses.iter().filter_map(|s| s.status.as_ref().and_then(|st| st.mtu)).filter(|m| *m > 0).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use serde_json::json;

    fn ds(generation: i64, status: DaemonSetStatus) -> DaemonSet {
        DaemonSet {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            status: Some(status),
            ..Default::default()
        }
    }

    fn rolled_out(n: i32) -> DaemonSetStatus {
        DaemonSetStatus {
            desired_number_scheduled: n,
            current_number_scheduled: n,
            number_ready: n,
            number_available: Some(n),
            updated_number_scheduled: Some(n),
            observed_generation: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn available_when_rolled_out() {
        let s = summarize(&Observed { daemonset: Some(ds(2, rolled_out(3))), ..Default::default() });
        assert!(s.available.status && !s.progressing.status && !s.degraded.status, "{s:?}");
        assert_eq!((s.desired, s.ready), (3, 3));
    }

    #[test]
    fn progressing_while_rolling() {
        let mut st = rolled_out(3);
        st.updated_number_scheduled = Some(1);
        let s = summarize(&Observed { daemonset: Some(ds(2, st)), ..Default::default() });
        assert!(s.progressing.status && !s.available.status);
        assert!(s.progressing.message.contains("1 of 3"));
        let s = summarize(&Observed { daemonset: Some(ds(3, rolled_out(3))), ..Default::default() });
        assert!(s.progressing.status, "generation not observed yet");
        let mut st = rolled_out(3);
        st.number_unavailable = Some(1);
        assert!(summarize(&Observed { daemonset: Some(ds(2, st)), ..Default::default() }).progressing.status);
    }

    #[test]
    fn degraded_reasons() {
        let s = summarize(&Observed { invalid: vec!["spec.network.mtu: too small".into()], ..Default::default() });
        assert!(s.degraded.status && s.degraded.reason == "InvalidConfiguration");
        assert!(s.degraded.message.contains("spec.network.mtu"));
        let s = summarize(&Observed {
            daemonset: Some(ds(2, rolled_out(2))),
            pod_failures: vec!["node-2".into()],
            ..Default::default()
        });
        assert!(s.degraded.status && s.degraded.reason == "PodFailure" && s.degraded.message.contains("node-2"));
        assert!(!s.available.status);
    }

    #[test]
    fn transition_time_kept_while_status_holds() {
        let t0 = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let t1 = Time("2026-01-01T00:05:00Z".parse().unwrap());
        let up = State::new(true, "AllObjectsAvailable", "");
        let first = conditions(&[("Available", &up)], &[], Some(1), &t0);
        let again = conditions(&[("Available", &up)], &first, Some(2), &t1);
        assert_eq!(again[0].last_transition_time, t0);
        let down = State::new(false, "ResourceNotReady", "x");
        let changed = conditions(&[("Available", &down)], &again, Some(2), &t1);
        assert_eq!(changed[0].last_transition_time, t1);
    }

    #[test]
    fn failing_pods() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let pods: Vec<Pod> = serde_json::from_value(json!([
            {"spec": {"nodeName": "a", "containers": []}, "status": {"containerStatuses": [{"name": "tabby-agent", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
            {"spec": {"nodeName": "b", "containers": []}, "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
            {"spec": {"nodeName": "c", "containers": []}, "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:09:30Z"}]}},
            {"spec": {"nodeName": "d", "containers": []}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
        ]))
        .unwrap();
        assert_eq!(pod_failures(&pods, now), vec!["a".to_string(), "b".to_string()]);
    }
}
