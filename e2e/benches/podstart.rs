//! `make bench-podstart` (root): pod creation → Ready, p50 and p99 over 30 pods spread by the scheduler across
//! the lab's 3 real nodes, in one lab, three ways in turn:
//!
//! - **floor**: host-network pods: the API server, scheduler, kubelet and containerd with no network plugin
//!   at all (what a pod costs before any CNI work);
//! - **reference**: Debian's reference plugins (ptp + host-local, then portmap: the shape of Tabby's list);
//! - **Tabby**: installed as README says (operator.yaml, custom-resources.yaml).
//!
//! Each pod runs the pause image and is created 200 ms after the one before (the latency mode of Kubernetes'
//! pod startup SLO: p99 ≤ 5 s), and its Ready time is when a watch sees its Ready condition turn true. After a
//! warm-up round, the floor is measured; then Tabby is installed and the reference and Tabby take rounds in
//! turn (the reference's conflist sorts first while it is there), so both see the same machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tabby_e2e::lab::daemon::{self, LabConfig};
use tabby_e2e::lab::{reference, sh};

const PODS: usize = 30;
const GAP: Duration = Duration::from_millis(200);
/// Rounds per plugin (each `PODS` pods), taken in turn.
const ROUNDS: usize = 2;
const NAMESPACE: &str = "podstart";

fn env_dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| tabby_e2e::repo_root().join(default))
}

fn kubectl(state: &Path, args: &[&str]) -> Result<String, String> {
    sh::kubectl(state, args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Creates `PODS` pods (one every `GAP`) and returns each one's creation → Ready time, sorted.
async fn run(client: &kube::Client, host_network: bool) -> Result<Vec<Duration>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let created: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch_pods = pods.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watch_pods, watcher::Config::default().labels("bench=podstart")).boxed();
        while let Some(Ok(event)) = stream.next().await {
            let seen = Instant::now();
            let list: Vec<Pod> = match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                _ => continue,
            };
            for p in list {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready && let Some(name) = p.metadata.name {
                    let _ = tx.send((name, seen));
                }
            }
        }
    });
    let start = Instant::now();
    for i in 0..PODS {
        let name = format!("p{i:02}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"bench": "podstart"}},
            "spec": {
                "hostNetwork": host_network,
                // Without a network plugin the nodes are NotReady and tainted; host-network pods run there
                // anyway (the tabby-node DaemonSet's pods do the same).
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}],
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10.2", "imagePullPolicy": "IfNotPresent"}]
            }
        }))
        .map_err(|e| e.to_string())?;
        let t = Instant::now();
        pods.create(&PostParams::default(), &pod).await.map_err(|e| format!("creating {name}: {e}"))?;
        created.lock().map_err(|e| e.to_string())?.insert(name, t);
        tokio::time::sleep_until((start + GAP * (i as u32 + 1)).into()).await;
    }
    let mut ready: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while ready.len() < PODS {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((name, at))) = tokio::time::timeout(left, rx.recv()).await else {
            return Err(format!("only {} of {PODS} pods became Ready in 180 s", ready.len()));
        };
        if let Some(t) = created.lock().map_err(|e| e.to_string())?.get(&name) {
            ready.entry(name).or_insert(at.saturating_duration_since(*t));
        }
    }
    watch.abort();
    pods.delete_collection(
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
        &ListParams::default().labels("bench=podstart"),
    )
    .await
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&ListParams::default().labels("bench=podstart")).await.map_err(|e| e.to_string())?.items.is_empty()
    {
        if Instant::now() > deadline {
            return Err("the pods were not deleted in 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut times: Vec<Duration> = ready.into_values().collect();
    times.sort();
    Ok(times)
}

fn all_nodes_ready(state: &Path, want: bool) -> bool {
    kubectl(state, &["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"])
        .is_ok_and(|s| s.split_whitespace().count() == 3 && s.split_whitespace().all(|v| (v == "True") == want))
}

async fn bench(cfg: &LabConfig) -> Result<Vec<(&'static str, Vec<Duration>)>, String> {
    let state = &cfg.state;
    daemon::start_cluster(cfg, Path::new(env!("CARGO_BIN_EXE_tabby-lab")), Instant::now())?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(state.join("kubeconfig")).map_err(|e| e.to_string())?,
        &Default::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    kubectl(state, &["create", "namespace", NAMESPACE])?;
    sh::wait_until("the default service account", Duration::from_secs(30), || {
        kubectl(state, &["get", "sa", "default", "-n", NAMESPACE]).is_ok()
    })?;
    // Debian's ptp + host-local + portmap as every node's network while it is there.
    let set_reference = |on: bool| -> Result<(), String> {
        if on {
            reference::install(state, cfg.nodes, |i| reference::ptp_conflist(i, true))?;
            std::thread::sleep(reference::RELOAD);
            Ok(())
        } else {
            reference::remove(state, cfg.nodes)
        }
    };

    // Warm-up, not counted: every node unpacks the pause image once (the lab imports without unpacking).
    println!("==> warm-up: host-network pods");
    run(&client, true).await?;
    println!("==> floor: host-network pods, no network plugin");
    let floor = run(&client, true).await?;

    println!("==> Tabby: kubectl create -f operator.yaml; kubectl create -f custom-resources.yaml");
    kubectl(state, &["create", "-f", "operator.yaml"])?;
    kubectl(state, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
    kubectl(state, &["create", "-f", "custom-resources.yaml"])?;
    sh::wait_until("TabbyStatus network", Duration::from_secs(120), || {
        kubectl(state, &["get", "tabbystatus", "network"]).is_ok()
    })?;
    kubectl(state, &["wait", "--for=condition=Available", "tabbystatus/network", "--timeout=300s"])?;
    sh::wait_until("nodes Ready with Tabby", Duration::from_secs(60), || all_nodes_ready(state, true))?;

    // Rounds in turn, so both see the same machine: reference, Tabby, reference, Tabby.
    let (mut reference, mut tabby) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        println!("==> round {round}/{ROUNDS}: reference (ptp + host-local + portmap on every node)");
        set_reference(true)?;
        reference.extend(run(&client, false).await?);
        println!("==> round {round}/{ROUNDS}: Tabby");
        set_reference(false)?;
        tabby.extend(run(&client, false).await?);
    }
    reference.sort();
    tabby.sort();
    let results = vec![("host network (floor)", floor), ("reference (ptp + host-local)", reference), ("Tabby", tabby)];
    Ok(results)
}

fn main() {
    if !tabby_testkit::skip::is_root() {
        eprintln!("SKIP bench-podstart: the lab needs root");
        std::process::exit(if tabby_e2e::in_ci() { 1 } else { 0 });
    }
    let state = std::env::temp_dir().join(format!("tabby-lab-podstart-{}", std::process::id()));
    let cfg = LabConfig {
        bin_dir: env_dir("TABBY_BIN_DIR", "target/lab-bin"),
        images: env_dir("TABBY_IMAGES", "target/images"),
        node_bin: env_dir("TABBY_NODE_BIN", ".cache/node/bin"),
        ..LabConfig::new(state.clone())
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let result = rt.block_on(bench(&cfg));
    if let Err(e) = daemon::down(&state) {
        eprintln!("lab down: {e}");
    }
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-podstart failed: {e}");
            std::process::exit(1);
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\nPod creation → Ready, {PODS} pods (one every {} ms) across 3 real nodes, pause image; {ROUNDS} rounds per plugin",
        GAP.as_millis()
    );
    println!("| plugin | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (name, times) in &results {
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {:.0} ms |",
            ms(percentile(times, 50.0)),
            ms(percentile(times, 99.0)),
            ms(*times.last().expect("pods"))
        );
    }
    let p50 = |name: &str| results.iter().find(|(n, _)| n.starts_with(name)).map(|(_, t)| ms(percentile(t, 50.0)));
    let p99 = |name: &str| results.iter().find(|(n, _)| n.starts_with(name)).map(|(_, t)| ms(percentile(t, 99.0)));
    if let (Some(t), Some(r), Some(t99), Some(r99)) = (p50("Tabby"), p50("reference"), p99("Tabby"), p99("reference")) {
        println!("\nTabby / reference: p50 {:.2}x, p99 {:.2}x (target: p50 within 1.1x)", t / r, t99 / r99);
        println!("Kubernetes' pod startup SLO: p99 ≤ 5000 ms (Tabby's p99: {t99:.0} ms)");
    }
}
