//! Shared pieces of the operator's control-plane tests: CRDs, nodes, an in-process operator, and a stand-in
//! kubelet that reports agent pods Running and Ready (there is no kubelet in the test control plane).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tabby_operator::controller::{self, Context, Settings};
use tabby_operator::metrics::Metrics;
use tabby_testkit::poll::wait;
use tabby_testkit::{ControlPlane, Options, repo_root, start_or_skip};
use tokio::task::JoinHandle;

pub const IMAGE: &str = "ghcr.io/tabby-dev/tabby:test";

/// A control plane with the DaemonSet controller and scheduler, Tabby's CRDs established, and `nodes` Nodes.
pub async fn cluster(test: &str, nodes: usize) -> Option<ControlPlane> {
    let cp = start_or_skip(test, Options::full()).await?;
    cp.kubectl_ok(&["create", "-f", repo_root().join("crds").to_str().unwrap()]);
    cp.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
    let api: Api<Node> = Api::all(cp.client());
    for i in 0..nodes {
        let name = format!("node-{i}");
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &node).await.unwrap();
        let status = json!({"status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "addresses": [{"type": "InternalIP", "address": format!("192.168.100.{}", 100 + i)}]
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    }
    Some(cp)
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The operator's controller, running in this process.
pub struct Operator {
    pub metrics: Metrics,
    task: JoinHandle<()>,
}

impl Operator {
    pub fn start(client: Client) -> Operator {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let ctx = Arc::new(Context::new(client, Settings { default_image: IMAGE.into() }, metrics.clone()));
        Operator { metrics, task: tokio::spawn(controller::run(ctx)) }
    }

    /// API writes so far.
    pub fn writes(&self) -> u64 {
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("w", "w", self.metrics.writes.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with("w_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// Plays the kubelet for agent pods: scheduled pods are reported Running and Ready; pods being deleted are
/// removed (a kubelet would confirm their deletion once the containers stopped).
pub fn fake_kubelet(client: Client) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, "tabby-system");
        loop {
            if let Ok(pods) = api.list(&ListParams::default()).await {
                for pod in pods.items {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if pod.metadata.deletion_timestamp.is_some() {
                        let _ = api
                            .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                            .await;
                        continue;
                    }
                    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    let ready = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                    if scheduled && !ready {
                        let status = json!({"status": {
                            "phase": "Running", "startTime": now(),
                            "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
                                {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
                                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()},
                                {"type": "Ready", "status": "True", "lastTransitionTime": now()}
                            ],
                            "containerStatuses": [{"name": "tabby-agent", "image": IMAGE, "imageID": "", "ready": true,
                                                   "restartCount": 0, "started": true, "state": {"running": {"startedAt": now()}}}]
                        }});
                        let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Polls `check` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let poll = || {
        let f = check();
        async move { f.await.ok_or_else(String::new) }
    };
    wait(what, timeout).every(Duration::from_millis(250)).until_ok_async(poll).await
}

/// The status of condition `type_` on TabbyStatus/network.
pub fn tabbystatus_condition(cp: &ControlPlane, type_: &str) -> Option<(String, String, String)> {
    let out = cp.kubectl(&["get", "tabbystatus", "network", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let c = v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
    Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into(), c["message"].as_str().unwrap_or("").into()))
}
