//! `make bench-policy` (root): Kubernetes NetworkPolicy on the lab's 3 real nodes, Tabby side by side with
//! kube-router's network-policy controller in one run, with 1,000 policies and 10,000 pod objects in the
//! cluster (the counts are knobs, below).
//!
//! One lab, and each controller alone on the nodes while it is measured:
//!
//! 1. the cluster; Debian's reference plugins on every node (ptp + host-local, a /24 of 10.244.0.0/16 per
//!    node, routes between the nodes); the scale objects in namespace `bench`: 100 Node objects with no
//!    kubelet behind them, 10,000 pods bound to those nodes with an address written into their status
//!    (phase Running; they never run anywhere, and tolerate the nodes' unreachable taints so nothing evicts
//!    them), 1,000 NetworkPolicies over them (policy p selects `app in (app-p, shared)` and admits
//!    `role=client-p` on TCP 80, the shape of `agent/benches/policy_scale.rs`); then a wait for the node
//!    controller's one burst of work on the fake nodes (their Ready condition set to Unknown, about 70 s
//!    after they are made: a status write per node that every node watcher sees), which took a fifth off
//!    the throughput of whichever iperf3 run it fell on;
//! 2. **kube-router** (only its firewall: `--run-firewall=true --run-router=false --run-service-proxy=false`)
//!    as a process on every node, over the reference plugins' pods; measured; then its pods deleted, the
//!    process stopped, its iptables rules and ipsets removed;
//! 3. **Tabby** installed as README says; the reference plugins' configuration removed; measured.
//!
//! What a phase measures, with its own pods (`kr-…` or `tb-…`: a server per node (agnhost netexec on 8080,
//! `app=server`), an allowed client (`role=client`) and a refused one (`role=other`) per node, in namespace
//! `probe`; an iperf3 pair in `bench`):
//!
//! - **policy created → enforced on every node**: a default-deny of `probe`, then an allow of `role=client`
//!   to `app=server`; from the `create` call until every node's probe (client on node i → server on node
//!   i+1) shows the new verdict; both policies deleted between rounds;
//! - **label change**: one client relabelled `role=blocked` and back, with the two policies standing: until
//!   its probe flips (end to end), and the controller's own time for the change on the server's node (Tabby:
//!   the agent's `policy programmed` line, compile + render + nft; kube-router: its full sync, the `Starting
//!   sync of iptables` / `sync iptables took` pair of its log);
//! - **pod created → Ready with its policy enforced**: a new server (selected by both policies): creation →
//!   Ready (the bench's watch), and creation → the moment from which the allowed client connects and the
//!   refused one does not;
//! - **TCP throughput** (iperf3 in the netshoot image, across nodes) with no policy on the pair, then with
//!   1,000 policies (the server relabelled `app=shared`, which every scale policy selects) and one allowing
//!   the client; the server keeps the 1,000 policies for the rest of the phase. A refused pod's probe says
//!   when the policies are in and stops before iperf3 starts (its attempts, dropped after every policy,
//!   cost the loaded case about 4%: measured);
//! - **RSS** of the controller on each node at the end (1,000 + 2 policies, 10,000 + the real pods).
//!
//! Probes are TCP connection attempts from the client pod's own network namespace (entered by this process,
//! found through the pod's cgroup), one every 10 ms, each given 200 ms; a verdict holds when 20 attempts in a
//! row agree. The floors beside the latencies are what no controller can beat: the bench's own watch seeing
//! the policy or the label (the same API server path every controller takes), and a host-network pod's
//! creation → Ready (no network plugin at all).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tabby_e2e::lab::daemon::{self, LabConfig};
use tabby_e2e::lab::node::LabNode;
use tabby_e2e::lab::{cgroups, reference, sh};

const SCALE_NS: &str = "bench";
const PROBE_NS: &str = "probe";
const SERVER_PORT: u16 = 8080;
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Attempts in a row that must agree for a verdict to hold.
const STABLE: usize = 20;
/// Longest wait for a verdict, a pod or a controller.
const WAIT: Duration = Duration::from_secs(180);
const PAUSE: &str = "registry.k8s.io/pause:3.10.2";
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";
const NETSHOOT: &str = "docker.io/nicolaka/netshoot:latest";
/// Label every real pod of the bench carries (the watch follows only them).
const REAL: (&str, &str) = ("bench-pod", "real");
const KUBE_ROUTER_VERSION: &str = "v2.1.0";

/// The counts, from the environment.
#[derive(Clone, Debug)]
struct Knobs {
    policies: usize,
    pods: usize,
    fake_nodes: usize,
    rounds: usize,
    label_rounds: usize,
    new_pods: usize,
    iperf_seconds: usize,
    iperf_runs: usize,
    tabby: bool,
    kube_router: bool,
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

impl Knobs {
    fn from_env() -> Knobs {
        let only = std::env::var("BENCH_POLICY_ONLY").unwrap_or_default();
        Knobs {
            policies: knob("BENCH_POLICY_POLICIES", 1000).max(1),
            pods: knob("BENCH_POLICY_PODS", 10_000),
            fake_nodes: knob("BENCH_POLICY_FAKE_NODES", 100).max(1),
            rounds: knob("BENCH_POLICY_ROUNDS", 10).max(1),
            label_rounds: knob("BENCH_POLICY_LABEL_ROUNDS", 10).max(1),
            new_pods: knob("BENCH_POLICY_NEW_PODS", 10).max(1),
            iperf_seconds: knob("BENCH_POLICY_IPERF_SECONDS", 5).max(1),
            iperf_runs: knob("BENCH_POLICY_IPERF_RUNS", 2).max(1),
            tabby: only.is_empty() || only == "tabby",
            kube_router: only.is_empty() || only == "kube-router",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Controller {
    KubeRouter,
    Tabby,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::KubeRouter => "kube-router",
            Controller::Tabby => "Tabby",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Controller::KubeRouter => "kr",
            Controller::Tabby => "tb",
        }
    }

    /// The controller's process name on a node.
    fn comm(self) -> &'static str {
        match self {
            Controller::KubeRouter => "kube-router",
            Controller::Tabby => "tabby-agent",
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// What the bench's own watch saw.

#[derive(Clone, Debug)]
struct PodSeen {
    at: Instant,
    name: String,
    labels: BTreeMap<String, String>,
    ip: Option<IpAddr>,
    ready: bool,
    deleted: bool,
}

#[derive(Default)]
struct Seen {
    pods: Vec<PodSeen>,
    /// (when, name, deleted)
    policies: Vec<(Instant, String, bool)>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

fn pod_seen(p: &Pod, at: Instant, deleted: bool) -> PodSeen {
    let status = p.status.as_ref();
    PodSeen {
        at,
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ip: status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        deleted,
    }
}

/// Watches `api` in the background: every object applied or deleted, when it was seen, and whether it was
/// deleted, to `on`.
fn watch_events<K>(api: Api<K>, cfg: watcher::Config, on: impl Fn(K, Instant, bool) + Send + 'static)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).boxed();
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on(o, at, false),
                Ok(watcher::Event::Delete(o)) => on(o, at, true),
                _ => {}
            }
        }
    });
}

/// Watches the bench's real pods (every namespace) and the probe namespace's policies into `seen`.
fn watch(client: &kube::Client, seen: &Shared) {
    let s = seen.clone();
    watch_events(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(&format!("{}={}", REAL.0, REAL.1)),
        move |p, at, deleted| lock(&s).pods.push(pod_seen(&p, at, deleted)),
    );
    let s = seen.clone();
    watch_events(
        Api::<NetworkPolicy>::namespaced(client.clone(), PROBE_NS),
        watcher::Config::default(),
        move |p, at, deleted| lock(&s).policies.push((at, p.metadata.name.unwrap_or_default(), deleted)),
    );
}

/// The first watch event of pod `name` after `after` that `pred` accepts, waiting up to `WAIT`.
async fn wait_pod(
    seen: &Shared,
    name: &str,
    after: Instant,
    pred: impl Fn(&PodSeen) -> bool,
) -> Result<PodSeen, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(p) = lock(seen).pods.iter().find(|p| p.at >= after && p.name == name && pred(p)) {
            return Ok(p.clone());
        }
        if Instant::now() > deadline {
            return Err(format!("pod {name}: the awaited state was not seen in {WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_policy_seen(seen: &Shared, name: &str, after: Instant) -> Result<Instant, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((at, _, _)) =
            lock(seen).policies.iter().find(|(at, n, deleted)| *at >= after && n == name && !deleted)
        {
            return Ok(*at);
        }
        if Instant::now() > deadline {
            return Err(format!("policy {name} was not seen in {WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Probes: TCP connection attempts from inside a pod's network namespace.

/// A pod's network namespace on this machine: `/proc/<pid>/ns/net` of a process in the pod's cgroup.
fn pod_netns(uid: &str) -> Result<PathBuf, String> {
    let needle = format!("pod{uid}/");
    for entry in std::fs::read_dir("/proc").map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&needle)) {
            return Ok(PathBuf::from(format!("/proc/{pid}/ns/net")));
        }
    }
    Err(format!("no process of pod {uid} on this machine"))
}

type Attempts = Arc<Mutex<Vec<(Instant, bool)>>>;

/// Connection attempts to `target` from a network namespace, one every `PROBE_EVERY`, until dropped.
struct Probe {
    name: String,
    attempts: Attempts,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(name: String, netns: &Path, target: SocketAddr) -> Result<Probe, String> {
        let attempts: Attempts = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (a, st, path) = (attempts.clone(), stop.clone(), netns.to_path_buf());
        let thread = std::thread::spawn(move || {
            // Every socket this thread's runtime opens is in the pod's namespace.
            if let Err(e) = tabby_testkit::netns::enter(&path.display().to_string()) {
                let _ = tx.send(Err(format!("{}: {e}", path.display())));
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            rt.block_on(async move {
                let mut tick = tokio::time::interval(PROBE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !st.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let started = Instant::now();
                    let a = a.clone();
                    tokio::spawn(async move {
                        let ok = match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await
                        {
                            Ok(Ok(s)) => {
                                // Closed with a reset: no TIME_WAIT left behind by thousands of attempts.
                                let _ = s.set_zero_linger();
                                true
                            }
                            _ => false,
                        };
                        a.lock().unwrap_or_else(|p| p.into_inner()).push((started, ok));
                    });
                }
                tokio::time::sleep(PROBE_TIMEOUT + Duration::from_millis(20)).await;
            });
        });
        rx.recv_timeout(Duration::from_secs(5)).map_err(|e| format!("probe {name}: {e}"))??;
        Ok(Probe { name, attempts, stop, thread: Some(thread) })
    }

    /// The attempts whose outcome is known (started at least `PROBE_TIMEOUT` ago), by start time.
    fn done(&self) -> Vec<(Instant, bool)> {
        let cutoff = Instant::now().checked_sub(PROBE_TIMEOUT + Duration::from_millis(20));
        let mut v: Vec<(Instant, bool)> = self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .filter(|(t, _)| cutoff.is_some_and(|c| *t <= c))
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The start of the final run of `want` among attempts started at or after `since`, once it is `STABLE`
/// attempts long.
fn settled(attempts: &[(Instant, bool)], since: Instant, want: bool) -> Option<Instant> {
    let after: Vec<&(Instant, bool)> = attempts.iter().filter(|(t, _)| *t >= since).collect();
    let run = after.iter().rev().take_while(|(_, ok)| *ok == want).count();
    (run >= STABLE).then(|| after[after.len() - run].0)
}

/// Waits until every probe shows `want` (allowed or not) for good; returns the latest flip, as time after
/// `since`. Fails when a probe showed `want` already before `since` (nothing to measure).
async fn flip(probes: &[Probe], since: Instant, want: bool) -> Result<Duration, String> {
    for p in probes {
        if p.done().iter().rev().find(|(t, _)| *t < since).is_some_and(|(_, ok)| *ok == want) {
            return Err(format!("probe {}: already {} before the change", p.name, verdict(want)));
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let flips: Vec<Option<Instant>> = probes.iter().map(|p| settled(&p.done(), since, want)).collect();
        if flips.iter().all(Option::is_some) {
            let last = flips.into_iter().flatten().max().unwrap_or(since);
            return Ok(last.saturating_duration_since(since));
        }
        if Instant::now() > deadline {
            let waiting: Vec<&str> =
                probes.iter().zip(&flips).filter(|(_, f)| f.is_none()).map(|(p, _)| p.name.as_str()).collect();
            return Err(format!("{waiting:?} not {} after {WAIT:?}", verdict(want)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every probe shows `want` for good, whatever it showed before.
async fn steady(probes: &[Probe], want: bool) -> Result<(), String> {
    let since = Instant::now();
    let deadline = since + WAIT;
    while !probes.iter().all(|p| settled(&p.done(), since, want).is_some()) {
        if Instant::now() > deadline {
            let names: Vec<&str> = probes.iter().map(|p| p.name.as_str()).collect();
            return Err(format!("{names:?} not steadily {} after {WAIT:?}", verdict(want)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "refused" }
}

// ---------------------------------------------------------------------------------------------------------
// The cluster.

fn kubectl(state: &Path, args: &[&str]) -> Result<String, String> {
    sh::kubectl(state, args)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn nodes_ready(state: &Path, nodes: usize) -> Result<(), String> {
    sh::wait_until("every node Ready", WAIT, || {
        kubectl(
            state,
            &[
                "get",
                "nodes",
                "-l",
                "kubernetes.io/os=linux",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ],
        )
        .is_ok_and(|s| s.split_whitespace().count() == nodes && s.split_whitespace().all(|v| v == "True"))
    })
}

/// Waits until the node controller has given every fake node its Ready condition (`Unknown`: no kubelet
/// ever reported), its one burst of work on them (a status write per node, which every controller
/// watching nodes sees), and a little after, so no phase is measured during it. Returns how long that
/// took and how many of them carry the unreachable taint by then (the controller adds those slowly, at
/// its rate for a zone mostly down).
async fn fake_nodes_settled(client: &kube::Client) -> Result<(Duration, usize), String> {
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let fake = ListParams::default().labels("bench=policy-fake");
    let deadline = started + Duration::from_secs(180);
    let unknown = |n: &Node| {
        n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready"))
    };
    let tainted = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"))
    };
    loop {
        let list = nodes.list(&fake).await.map_err(|e| e.to_string())?;
        if list.items.iter().all(unknown) {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let list = nodes.list(&fake).await.map_err(|e| e.to_string())?;
            return Ok((started.elapsed(), list.items.iter().filter(|n| tainted(n)).count()));
        }
        if Instant::now() > deadline {
            let done = list.items.iter().filter(|n| unknown(n)).count();
            return Err(format!("the node controller gave {done} of the fake nodes a Ready condition in 180 s"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The scale objects: Node objects without kubelets, pods bound to them with addresses, policies over them.
async fn scale_objects(client: &kube::Client, k: &Knobs) -> Result<Duration, String> {
    let started = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [SCALE_NS, PROBE_NS] {
        namespaces
            .create(&PostParams::default(), &from_json(json!({"metadata": {"name": ns}}))?)
            .await
            .map_err(|e| format!("namespace {ns}: {e}"))?;
    }
    // Pods are admitted once their namespace's default service account exists.
    for ns in [SCALE_NS, PROBE_NS] {
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
        let deadline = Instant::now() + WAIT;
        while sa.get_opt("default").await.map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                return Err(format!("no default service account in namespace {ns}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Without `kubernetes.io/os=linux` no DaemonSet (Tabby's agent) wants them.
    let nodes: Api<Node> = Api::all(client.clone());
    for n in 0..k.fake_nodes {
        let node = json!({"metadata": {"name": format!("fake-{n}"), "labels": {"bench": "policy-fake"}}});
        nodes.create(&PostParams::default(), &from_json(node)?).await.map_err(|e| format!("node fake-{n}: {e}"))?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), SCALE_NS);
    let policies = k.policies;
    let fake_nodes = k.fake_nodes;
    let made = futures::stream::iter(0..k.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("pod-{i}");
                let ip = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
                let pod = json!({
                    "metadata": {"name": name, "labels": {
                        "app": format!("app-{}", i % policies), "role": format!("client-{}", (i / 7) % policies)}},
                    "spec": {
                        "nodeName": format!("fake-{}", i % fake_nodes),
                        // The nodes never report: their unreachable taints must not evict these pods.
                        "tolerations": [
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
                        "automountServiceAccountToken": false,
                        "containers": [{"name": "c", "image": PAUSE}]
                    }
                });
                pods.create(&PostParams::default(), &from_json(pod)?).await.map_err(|e| format!("{name}: {e}"))?;
                // Running with an address and no Ready condition (the node controller then leaves them alone).
                let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .map_err(|e| format!("{name} status: {e}"))?;
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(24);
    let results: Vec<Result<(), String>> = made.collect().await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), SCALE_NS);
    let made = futures::stream::iter(0..k.policies)
        .map(|p| {
            let nps = nps.clone();
            async move {
                let np = json!({
                    "metadata": {"name": format!("np-{p}")},
                    "spec": {
                        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [format!("app-{p}"), "shared"]}]},
                        "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client-{p}")}}}],
                                     "ports": [{"protocol": "TCP", "port": 80}]}]
                    }
                });
                nps.create(&PostParams::default(), &from_json(np)?).await.map_err(|e| format!("np-{p}: {e}"))?;
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(16);
    let results: Vec<Result<(), String>> = made.collect().await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    // The iperf3 client's way in once its server takes the 1,000 policies.
    let allow = json!({
        "metadata": {"name": "iperf-allow"},
        "spec": {"podSelector": {"matchLabels": {"app": "shared"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "iperf-client"}}}],
                              "ports": [{"protocol": "TCP", "port": 5201}]}]}
    });
    nps.create(&PostParams::default(), &from_json(allow)?).await.map_err(|e| format!("iperf-allow: {e}"))?;
    Ok(started.elapsed())
}

/// A real pod of the bench on lab node `node`.
fn real_pod(name: &str, node: usize, labels: Value, container: Value, host_network: bool) -> Result<Pod, String> {
    let mut labels = labels;
    labels[REAL.0] = json!(REAL.1);
    let mut c = container;
    c["name"] = json!("c");
    c["imagePullPolicy"] = json!("IfNotPresent");
    from_json(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "hostNetwork": host_network,
            "nodeSelector": {"kubernetes.io/hostname": format!("node-{node}")},
            "terminationGracePeriodSeconds": 0,
            "containers": [c]
        }
    }))
}

fn server(name: &str, node: usize) -> Result<Pod, String> {
    real_pod(
        name,
        node,
        json!({"app": "server"}),
        json!({"image": AGNHOST, "args": ["netexec", format!("--http-port={SERVER_PORT}"), "--udp-port=-1"]}),
        false,
    )
}

fn sleeper(name: &str, node: usize, role: &str) -> Result<Pod, String> {
    real_pod(name, node, json!({"role": role}), json!({"image": PAUSE}), false)
}

const PROBE_POLICIES: [&str; 2] = ["deny-all", "allow-client"];

fn probe_policy(name: &str) -> Result<NetworkPolicy, String> {
    let spec = match name {
        "deny-all" => json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        _ => json!({
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": SERVER_PORT}]}]
        }),
    };
    from_json(json!({"metadata": {"name": name}, "spec": spec}))
}

async fn delete_probe_policies(nps: &Api<NetworkPolicy>) -> Result<(), String> {
    for name in PROBE_POLICIES {
        match nps.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(format!("deleting {name}: {e}")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The controllers: processes, logs, memory.

fn kube_router_log(state: &Path, node: usize) -> PathBuf {
    state.join(format!("kube-router-node-{node}.log"))
}

/// kube-router on lab node `node`, as a node process (in the node's namespaces and system cgroup).
fn start_kube_router(state: &Path, bin: &Path, node: usize) -> Result<Child, String> {
    let n = LabNode::new(state, node);
    let log = std::fs::File::create(kube_router_log(state, node)).map_err(|e| e.to_string())?;
    let argv: Vec<String> = vec![
        bin.display().to_string(),
        "--run-firewall=true".into(),
        "--run-router=false".into(),
        "--run-service-proxy=false".into(),
        format!("--kubeconfig={}", state.join("kubeconfig").display()),
        format!("--hostname-override={}", n.name),
        format!("--service-cluster-ip-range={}", tabby_e2e::lab::SERVICE_CIDR),
        // Level 1 logs each sync's start and length.
        "--v=1".into(),
    ];
    n.command(&argv, &[])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("kube-router on {}: {e}", n.name))
}

/// A Go duration (`1.5s`, `850.2ms`, `1m2.5s`, `12µs`).
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..n].parse().ok()?;
        let unit_end = rest[n..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |u| n + u);
        let scale = match &rest[n..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "µs" | "us" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

/// kube-router's syncs in its log: (start, length). A sync logs `Starting sync of iptables with version: V`
/// (V: its start in Unix nanoseconds) and, at its end, `sync iptables took D`; syncs never overlap.
fn kube_router_syncs(log: &str) -> Vec<(SystemTime, Duration)> {
    let mut out = Vec::new();
    let mut start = None;
    for line in log.lines() {
        if let Some(v) = line.split("Starting sync of iptables with version: ").nth(1) {
            start = v
                .trim()
                .parse::<i64>()
                .ok()
                .and_then(|ns| u64::try_from(ns).ok())
                .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns));
        } else if let Some(d) = line.split("sync iptables took ").nth(1)
            && let (Some(s), Some(d)) = (start.take(), go_duration(d))
        {
            out.push((s, d));
        }
    }
    out
}

/// The agent's `policy programmed` lines: (when it was written, compile + render + nft time, compile + render
/// (or the patch of the last compile), whether it was a patch).
fn tabby_applies(log: &str) -> Vec<(SystemTime, Duration, Duration, bool)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "policy programmed")
        .filter_map(|v| {
            let ts: k8s_openapi::jiff::Timestamp = v["timestamp"].as_str()?.parse().ok()?;
            let at = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ts.as_nanosecond()).ok()?);
            let (compile, apply) = (v["compile_ms"].as_f64()?, v["apply_ms"].as_f64()?);
            let patched = v["patched"].as_bool().unwrap_or(false);
            Some((
                at,
                Duration::from_secs_f64((compile + apply) / 1000.0),
                Duration::from_secs_f64(compile / 1000.0),
                patched,
            ))
        })
        .collect()
}

/// The agent's `slow network pass` lines: (elapsed ms, where the time went).
fn slow_passes(log: &str) -> Vec<(u64, String)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "slow network pass")
        .filter_map(|v| Some((v["elapsed_ms"].as_u64()?, v["parts"].as_str().unwrap_or_default().to_string())))
        .collect()
}

/// The agent's last `heap` line (after a trim): (in use, free inside the heap) MiB.
fn last_heap(log: &str) -> Option<(f64, f64)> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "heap")
        .find_map(|v| Some((v["in_use_mib"].as_f64()?, v["free_mib"].as_f64()?)))
}

/// The agent's `heap` line with the most in use over its whole log: (in use, free inside the heap) MiB and
/// the log line just before it (what the agent had been doing).
fn most_heap(log: &str) -> Option<(f64, f64, String)> {
    let mut before = String::new();
    let mut best: Option<(f64, f64, String)> = None;
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["message"] == "heap" {
            if let (Some(u), Some(f)) = (v["in_use_mib"].as_f64(), v["free_mib"].as_f64())
                && best.as_ref().is_none_or(|b| u + f > b.0 + b.1)
            {
                best = Some((u, f, before.clone()));
            }
        } else {
            before = format!("{} {}", v["timestamp"].as_str().unwrap_or(""), v["message"].as_str().unwrap_or(""));
        }
    }
    best
}

/// Where the controllers' logs are kept after the lab is gone.
fn kept_logs() -> PathBuf {
    let keep = tabby_e2e::repo_root().join("target/bench-policy");
    let _ = std::fs::create_dir_all(&keep);
    keep
}

/// The agent's log on lab node `node`.
async fn agent_log(client: &kube::Client, node: usize) -> Result<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "tabby-system");
    let list = pods.list(&ListParams::default().labels("k8s-app=tabby-node")).await.map_err(|e| e.to_string())?;
    let want = format!("node-{node}");
    let pod = list
        .items
        .iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(want.as_str()))
        .and_then(|p| p.metadata.name.clone())
        .ok_or_else(|| format!("no tabby-node pod on {want}"))?;
    pods.logs(&pod, &LogParams { container: Some("tabby-agent".into()), ..LogParams::default() })
        .await
        .map_err(|e| format!("logs of {pod}: {e}"))
}

/// One apply of a controller, by its own clock: when it counts for a change (Tabby: when it ended, so the
/// change made before it is in; kube-router: when it started), how long it took, and (Tabby) its compile part.
type Apply = (SystemTime, Duration, Option<(Duration, bool)>);

/// Every apply of the controller on `node` so far (its log, read once).
async fn controller_applies(
    c: Controller,
    state: &Path,
    client: &kube::Client,
    node: usize,
) -> Result<Vec<Apply>, String> {
    Ok(match c {
        Controller::KubeRouter => {
            let log = std::fs::read_to_string(kube_router_log(state, node)).map_err(|e| e.to_string())?;
            kube_router_syncs(&log).into_iter().map(|(start, d)| (start, d, None)).collect()
        }
        Controller::Tabby => tabby_applies(&agent_log(client, node).await?)
            .into_iter()
            .map(|(end, d, compile, patched)| (end, d, Some((compile, patched))))
            .collect(),
    })
}

/// What the controller did for a change made at `at`: its first apply that counts for it.
fn apply_for(applies: &[Apply], at: SystemTime) -> Option<(Duration, Option<(Duration, bool)>)> {
    applies.iter().find(|(t, _, _)| *t >= at).map(|(_, d, compile)| (*d, *compile))
}

/// Waits until the controllers have applied what changed at `at` and are idle. kube-router: on every node
/// a sync started after `at` has ended, none is running, and none started for 0.5 s (a request that came
/// during a sync starts right after it). Tabby: 1 s (a pass is ~0.1 s after an event, and a node the
/// change does not concern writes nothing to wait for).
async fn settle(c: Controller, state: &Path, nodes: usize, at: SystemTime) -> Result<(), String> {
    match c {
        Controller::Tabby => tokio::time::sleep(Duration::from_secs(1)).await,
        Controller::KubeRouter => {
            let deadline = Instant::now() + WAIT;
            let quiet = Duration::from_millis(500);
            loop {
                let now = SystemTime::now();
                let idle = (0..nodes).all(|n| {
                    let log = std::fs::read_to_string(kube_router_log(state, n)).unwrap_or_default();
                    let syncs = kube_router_syncs(&log);
                    let running = log.matches("Starting sync of iptables with version: ").count() > syncs.len();
                    let last_end = syncs.last().map(|(start, d)| *start + *d);
                    !running
                        && syncs.iter().any(|(start, _)| *start >= at)
                        && last_end.is_some_and(|e| now.duration_since(e).unwrap_or_default() >= quiet)
                });
                if idle {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("kube-router did not settle within {WAIT:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// (RSS, peak RSS) in KiB of the process named `comm` on lab node `node`.
fn rss(state: &Path, node: usize, comm: &str) -> Option<(u64, u64)> {
    let n = LabNode::new(state, node);
    let pid = cgroups::processes(&n.cgroup_root)
        .into_iter()
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |key: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

/// Where the resident memory of the process named `comm` on lab node `node` is, KiB: the C library's
/// heap (`[heap]`), other anonymous mappings (large blocks, thread stacks) and files (the binary and
/// its libraries), from `/proc/PID/smaps`.
fn resident_parts(state: &Path, node: usize, comm: &str) -> Option<(u64, u64, u64)> {
    let n = LabNode::new(state, node);
    let pid = cgroups::processes(&n.cgroup_root)
        .into_iter()
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut heap, mut anon, mut file) = (0, 0, 0);
    // A mapping's header line names it (a path, `[heap]`, `[stack]` or nothing); its `Rss:` line follows.
    let mut kind = 0;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match kind {
                0 => heap += kib,
                1 => anon += kib,
                _ => file += kib,
            }
        } else if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            let name = line.split_whitespace().nth(5).unwrap_or("");
            kind = match name {
                "[heap]" => 0,
                n if n.is_empty() || n.starts_with('[') => 1,
                _ => 2,
            };
        }
    }
    Some((heap, anon, file))
}

// ---------------------------------------------------------------------------------------------------------
// One controller's measurements.

#[derive(Default)]
struct Results {
    policy: Vec<Duration>,
    policy_floor: Vec<Duration>,
    ready: Vec<Duration>,
    ready_enforced: Vec<Duration>,
    label: Vec<Duration>,
    label_floor: Vec<Duration>,
    label_apply: Vec<Duration>,
    /// Tabby: the compile and render part of `label_apply`.
    label_compile: Vec<Duration>,
    /// Tabby: how many of those patched the last compile (another node's pod changed).
    label_patched: usize,
    /// Policy created → programmed by the controller (its own time), the slowest node of each policy.
    policy_apply: Vec<Duration>,
    /// Tabby: the agents' slow passes (node, elapsed ms, where the time went), from their logs.
    slow_passes: Vec<(usize, u64, String)>,
    /// Relabelled into the 1,000 policies → enforced.
    shared: Vec<Duration>,
    tput_none: Vec<f64>,
    tput_with: Vec<f64>,
    /// (RSS, peak) KiB per node.
    rss: Vec<(u64, u64)>,
    /// Tabby: resident KiB in the C library's heap, other anonymous mappings and files, per node.
    parts: Vec<Option<(u64, u64, u64)>>,
    /// Tabby: the heap as the agent last reported it (in use, free inside it), MiB per node.
    heap: Vec<Option<(f64, f64)>>,
    /// The largest heap (in use + free) each agent reported, and what it logged just before.
    most_heap: Vec<Option<(f64, f64, String)>>,
    /// Start → first complete program with every object listed (kube-router: its first sync; Tabby: the
    /// agent's first network pass), per node.
    first: Vec<Duration>,
    /// The largest peak RSS (KiB) of the 3 nodes after each step of the phase: where the peak was reached.
    peaks: Vec<(&'static str, u64)>,
}

impl Results {
    /// Notes the controller's largest peak RSS over the nodes now, after `step`.
    fn peak_after(&mut self, step: &'static str, state: &Path, nodes: usize, c: Controller) {
        if let Some(p) = (0..nodes).filter_map(|i| rss(state, i, c.comm())).map(|(_, hwm)| hwm).max() {
            self.peaks.push((step, p));
        }
    }
}

struct Ctx {
    state: PathBuf,
    nodes: usize,
    client: kube::Client,
    seen: Shared,
    k: Knobs,
}

/// A pod the phase made, with what the probes need.
struct Running {
    ip: IpAddr,
    netns: PathBuf,
}

async fn create_and_wait(ctx: &Ctx, ns: &str, pods: Vec<Pod>) -> Result<BTreeMap<String, Running>, String> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let t = Instant::now();
    for p in &pods {
        api.create(&PostParams::default(), p).await.map_err(|e| format!("creating {:?}: {e}", p.metadata.name))?;
    }
    let mut out = BTreeMap::new();
    for p in pods {
        let name = p.metadata.name.unwrap_or_default();
        let ready = wait_pod(&ctx.seen, &name, t, |s| s.ready && s.ip.is_some()).await?;
        let uid = api.get(&name).await.map_err(|e| e.to_string())?.metadata.uid.unwrap_or_default();
        let netns = pod_netns(&uid)?;
        out.insert(name, Running { ip: ready.ip.ok_or("ip")?, netns });
    }
    Ok(out)
}

async fn relabel(api: &Api<Pod>, name: &str, key: &str, value: &str) -> Result<(), String> {
    let patch = json!({"metadata": {"labels": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("relabel {name}: {e}"))?;
    Ok(())
}

fn iperf(state: &Path, client: &str, server: IpAddr, seconds: usize) -> Result<f64, String> {
    let out = kubectl(
        state,
        &["exec", "-n", SCALE_NS, client, "--", "iperf3", "-c", &server.to_string(), "-t", &seconds.to_string(), "-J"],
    )?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("iperf3 -J: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).ok_or_else(|| format!("iperf3: {out}"))
}

async fn phase(ctx: &Ctx, c: Controller, r: &mut Results) -> Result<(), String> {
    let (n, p, k) = (ctx.nodes, c.prefix(), &ctx.k);
    let state = ctx.state.as_path();
    let probe_pods: Api<Pod> = Api::namespaced(ctx.client.clone(), PROBE_NS);
    let scale_pods: Api<Pod> = Api::namespaced(ctx.client.clone(), SCALE_NS);
    let nps: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), PROBE_NS);
    let (srv, cli, bad) =
        (|i: usize| format!("{p}-srv-{i}"), |i: usize| format!("{p}-cli-{i}"), |i: usize| format!("{p}-bad-{i}"));

    println!("==> {}: the phase's pods", c.name());
    let mut pods = Vec::new();
    for i in 0..n {
        pods.push(server(&srv(i), i)?);
        pods.push(sleeper(&cli(i), i, "client")?);
        pods.push(sleeper(&bad(i), i, "other")?);
    }
    let probe = create_and_wait(ctx, PROBE_NS, pods).await?;
    let (tsrv, tcli, tbad) = (format!("{p}-iperf-server"), format!("{p}-iperf-client"), format!("{p}-iperf-other"));
    let (srv_node, cli_node) = (1 % n, 2 % n);
    let iperf_pods = vec![
        real_pod(
            &tsrv,
            srv_node,
            json!({"app": "solo"}),
            json!({"image": NETSHOOT, "command": ["bash", "-c", format!("nc -dlk {SERVER_PORT} & exec iperf3 -s")]}),
            false,
        )?,
        real_pod(
            &tcli,
            cli_node,
            json!({"role": "iperf-client"}),
            json!({"image": NETSHOOT, "command": ["sleep", "infinity"]}),
            false,
        )?,
        sleeper(&tbad, cli_node, "nobody")?,
    ];
    let iperf_running = create_and_wait(ctx, SCALE_NS, iperf_pods).await?;
    let ip = |m: &BTreeMap<String, Running>, name: &str| m.get(name).map(|r| r.ip).ok_or(format!("{name}: no address"));
    let netns = |m: &BTreeMap<String, Running>, name: &str| {
        m.get(name).map(|r| r.netns.clone()).ok_or(format!("{name}: no netns"))
    };
    // Client on node i → server on node i+1.
    let ring = |from: &dyn Fn(usize) -> String| -> Result<Vec<Probe>, String> {
        (0..n)
            .map(|i| {
                let to = srv((i + 1) % n);
                Probe::start(
                    format!("{} → {to}", from(i)),
                    &netns(&probe, &from(i))?,
                    SocketAddr::new(ip(&probe, &to)?, SERVER_PORT),
                )
            })
            .collect()
    };
    steady(&ring(&cli)?, true).await?;
    r.peak_after("the phase's pods", state, n, c);

    // Throughput: no policy on the pair, then 1,000 (+ the client's allow) on the server; the refused pod's
    // probe says when they are in, and stops before iperf3 runs (its attempts, accepted in one case and
    // dropped after every policy in the other, must not load one case more than the other).
    println!("==> {}: iperf3 {} s × {} runs, none / 1,000 policies", c.name(), k.iperf_seconds, k.iperf_runs);
    let server_ip = ip(&iperf_running, &tsrv)?;
    let other = || -> Result<[Probe; 1], String> {
        Ok([Probe::start(
            format!("{tbad} → {tsrv}"),
            &netns(&iperf_running, &tbad)?,
            SocketAddr::new(server_ip, SERVER_PORT),
        )?])
    };
    steady(&other()?, true).await?;
    for run in 0..k.iperf_runs {
        if run > 0 {
            let at = SystemTime::now();
            relabel(&scale_pods, &tsrv, "app", "solo").await?;
            steady(&other()?, true).await?;
            settle(c, state, n, at).await?;
        }
        let st = ctx.state.clone();
        let (cl, secs) = (tcli.clone(), k.iperf_seconds);
        let none_at = k8s_openapi::jiff::Timestamp::now();
        r.tput_none.push(blocking(move || iperf(&st, &cl, server_ip, secs)).await?);
        let probe = other()?;
        let (t0, at) = (Instant::now(), SystemTime::now());
        relabel(&scale_pods, &tsrv, "app", "shared").await?;
        r.shared.push(flip(&probe, t0, false).await?);
        drop(probe);
        settle(c, state, n, at).await?;
        let st = ctx.state.clone();
        let cl = tcli.clone();
        let with_at = k8s_openapi::jiff::Timestamp::now();
        r.tput_with.push(blocking(move || iperf(&st, &cl, server_ip, secs)).await?);
        println!(
            "    run {}: none {:.2} Gbit/s (from {none_at:.0}), 1,000 policies {:.2} Gbit/s (from {with_at:.0})",
            run + 1,
            r.tput_none.last().copied().unwrap_or_default(),
            r.tput_with.last().copied().unwrap_or_default()
        );
    }
    r.peak_after("throughput (relabels into 1,000)", state, n, c);

    // Policy created → enforced on every node: a default deny, then the allow.
    println!("==> {}: {} rounds of default-deny then allow in namespace {PROBE_NS}", c.name(), k.rounds);
    let mut policy_events = Vec::new();
    for _ in 0..k.rounds {
        let probes = ring(&cli)?;
        steady(&probes, true).await?;
        for (name, want) in [("deny-all", false), ("allow-client", true)] {
            let (t0, wall) = (Instant::now(), SystemTime::now());
            nps.create(&PostParams::default(), &probe_policy(name)?).await.map_err(|e| format!("{name}: {e}"))?;
            r.policy.push(flip(&probes, t0, want).await?);
            r.policy_floor.push(wait_policy_seen(&ctx.seen, name, t0).await?.saturating_duration_since(t0));
            policy_events.push(wall);
        }
        drop(probes);
        let at = SystemTime::now();
        delete_probe_policies(&nps).await?;
        settle(c, state, n, at).await?;
    }

    r.peak_after("policy rounds", state, n, c);

    // Each policy's programming on its slowest node (every node enforces a probe policy).
    let mut applies = Vec::with_capacity(n);
    for node in 0..n {
        applies.push(controller_applies(c, state, &ctx.client, node).await?);
    }
    for wall in policy_events {
        r.policy_apply.extend(applies.iter().filter_map(|a| apply_for(a, wall)).map(|(d, _)| d).max());
    }

    // One label change: the two policies stand; a client leaves role=client and comes back.
    println!("==> {}: {} label changes", c.name(), 2 * k.label_rounds);
    let at = SystemTime::now();
    for name in PROBE_POLICIES {
        nps.create(&PostParams::default(), &probe_policy(name)?).await.map_err(|e| format!("{name}: {e}"))?;
    }
    let probes = ring(&cli)?;
    steady(&probes, true).await?;
    drop(probes);
    settle(c, state, n, at).await?;
    let mut events = Vec::new();
    for round in 0..k.label_rounds {
        let i = round % n;
        let to = srv((i + 1) % n);
        let probes = [Probe::start(
            format!("{} → {to}", cli(i)),
            &netns(&probe, &cli(i))?,
            SocketAddr::new(ip(&probe, &to)?, SERVER_PORT),
        )?];
        steady(&probes, true).await?;
        for (role, want) in [("blocked", false), ("client", true)] {
            let (t0, wall) = (Instant::now(), SystemTime::now());
            relabel(&probe_pods, &cli(i), "role", role).await?;
            r.label.push(flip(&probes, t0, want).await?);
            let seen = wait_pod(&ctx.seen, &cli(i), t0, |s| s.labels.get("role").is_some_and(|v| v == role)).await?;
            r.label_floor.push(seen.at.saturating_duration_since(t0));
            events.push((wall, (i + 1) % n));
            settle(c, state, n, wall).await?;
        }
    }
    let mut applies = Vec::with_capacity(n);
    for node in 0..n {
        applies.push(controller_applies(c, state, &ctx.client, node).await?);
    }
    for (wall, node) in events {
        match apply_for(&applies[node], wall) {
            Some((d, compile)) => {
                r.label_apply.push(d);
                if let Some((c, patched)) = compile {
                    r.label_compile.push(c);
                    r.label_patched += usize::from(patched);
                }
            }
            None => println!("    no apply found on node-{node} for a label change (skipped)"),
        }
    }

    r.peak_after("label changes", state, n, c);

    // Pod created → Ready with its policy enforced.
    println!("==> {}: {} new servers under the two policies", c.name(), k.new_pods);
    for j in 0..k.new_pods {
        let node = j % n;
        let name = format!("{p}-new-{j}");
        let t0 = Instant::now();
        probe_pods.create(&PostParams::default(), &server(&name, node)?).await.map_err(|e| format!("{name}: {e}"))?;
        let with_ip = wait_pod(&ctx.seen, &name, t0, |s| s.ip.is_some()).await?;
        let target = SocketAddr::new(with_ip.ip.ok_or("ip")?, SERVER_PORT);
        let (good, evil) = (cli((node + 1) % n), bad((node + 1) % n));
        let allowed = Probe::start(format!("{good} → {name}"), &netns(&probe, &good)?, target)?;
        let refused = Probe::start(format!("{evil} → {name}"), &netns(&probe, &evil)?, target)?;
        let ready = wait_pod(&ctx.seen, &name, t0, |s| s.ready).await?.at;
        // Enforced: the allowed client gets through for good (the server listens) and, from then on, the
        // refused one never does: from the later of the two runs' starts.
        let deadline = Instant::now() + WAIT;
        let enforced = loop {
            let a = settled(&allowed.done(), t0, true);
            let done = refused.done();
            let u = settled(&done, t0, false);
            if let (Some(a), Some(u)) = (a, u)
                && done.last().is_some_and(|(t, _)| *t > a + Duration::from_millis(300))
            {
                break a.max(u);
            }
            if Instant::now() > deadline {
                return Err(format!("{name}: not enforced within {WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        drop((allowed, refused));
        r.ready.push(ready.saturating_duration_since(t0));
        r.ready_enforced.push(ready.max(enforced).saturating_duration_since(t0));
        let at = SystemTime::now();
        probe_pods
            .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .map_err(|e| format!("deleting {name}: {e}"))?;
        wait_pod(&ctx.seen, &name, t0, |s| s.deleted).await?;
        settle(c, state, n, at).await?;
    }

    r.peak_after("new pods", state, n, c);

    // Memory, with everything in place.
    let comm = c.comm();
    for i in 0..n {
        r.rss.push(rss(state, i, comm).ok_or(format!("no {comm} process on node-{i}"))?);
    }
    if c == Controller::Tabby {
        let keep = kept_logs();
        for i in 0..n {
            let log = agent_log(&ctx.client, i).await?;
            // The agents' logs outlive the lab.
            let _ = std::fs::write(keep.join(format!("tabby-agent-node-{i}.log")), &log);
            r.slow_passes.extend(slow_passes(&log).into_iter().map(|(ms, p)| (i, ms, p)));
            r.heap.push(last_heap(&log));
            r.most_heap.push(most_heap(&log));
            r.parts.push(resident_parts(state, i, comm));
        }
    }

    // Leave nothing of the phase but the scale objects.
    delete_probe_policies(&nps).await?;
    let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    let real = ListParams::default().labels(&format!("{}={}", REAL.0, REAL.1));
    for api in [&probe_pods, &scale_pods] {
        api.delete_collection(&dp, &real).await.map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + WAIT;
    for api in [&probe_pods, &scale_pods] {
        while !api.list(&real).await.map_err(|e| e.to_string())?.items.is_empty() {
            if Instant::now() > deadline {
                return Err("the phase's pods were not deleted".into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// Host-network pods (no network plugin at all): creation → Ready, the floor of a pod's start.
async fn ready_floor(ctx: &Ctx) -> Result<Vec<Duration>, String> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), PROBE_NS);
    let mut out = Vec::new();
    for j in 0..ctx.k.new_pods {
        let name = format!("host-{j}");
        let t0 = Instant::now();
        let pod = real_pod(&name, j % ctx.nodes, json!({}), json!({"image": PAUSE}), true)?;
        api.create(&PostParams::default(), &pod).await.map_err(|e| format!("{name}: {e}"))?;
        out.push(wait_pod(&ctx.seen, &name, t0, |s| s.ready).await?.at.saturating_duration_since(t0));
        api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .map_err(|e| e.to_string())?;
        wait_pod(&ctx.seen, &name, t0, |s| s.deleted).await?;
    }
    Ok(out)
}

async fn kube_router_phase(ctx: &Ctx, bin: &Path, r: &mut Results) -> Result<(), String> {
    if !bin.is_file() {
        return Err(format!("{} is missing (make kube-router)", bin.display()));
    }
    let version = Command::new(bin).arg("--version").output().map_err(|e| format!("{}: {e}", bin.display()))?;
    // klog writes the version line to stderr: `… Running <path> version v2.1.0, built on …`.
    let text = String::from_utf8_lossy(&version.stderr).into_owned() + &String::from_utf8_lossy(&version.stdout);
    let version = text
        .lines()
        .find_map(|l| l.split(" version ").nth(1))
        .and_then(|v| v.split(',').next())
        .map_or_else(|| "kube-router".to_string(), |v| format!("kube-router {v}"));
    println!("==> {version} on every node (--run-firewall=true --run-router=false --run-service-proxy=false)");
    let started = SystemTime::now();
    let mut children = Vec::new();
    for i in 0..ctx.nodes {
        children.push(start_kube_router(&ctx.state, bin, i)?);
    }
    let result = async {
        let deadline = Instant::now() + WAIT;
        for i in 0..ctx.nodes {
            let first = loop {
                let log = std::fs::read_to_string(kube_router_log(&ctx.state, i)).unwrap_or_default();
                if let Some((start, d)) = kube_router_syncs(&log).first() {
                    break start.duration_since(started).unwrap_or_default() + *d;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "kube-router on node-{i} did not sync in {WAIT:?}; see {}",
                        kube_router_log(&ctx.state, i).display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            r.first.push(first);
        }
        r.peak_after("start (first full program)", &ctx.state, ctx.nodes, Controller::KubeRouter);
        phase(ctx, Controller::KubeRouter, r).await
    }
    .await;
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Its logs outlive the lab.
    let keep = kept_logs();
    for i in 0..ctx.nodes {
        let _ = std::fs::copy(kube_router_log(&ctx.state, i), keep.join(format!("kube-router-node-{i}.log")));
    }
    // What kube-router left in the nodes' kernels (it removes nothing when it stops).
    for i in 0..ctx.nodes {
        let out = LabNode::new(&ctx.state, i)
            .shell("iptables -t filter -F && iptables -t filter -X && ipset destroy")
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            return Err(format!("node-{i}: removing kube-router's rules: {out:?}"));
        }
    }
    result
}

async fn tabby_phase(ctx: &Ctx, r: &mut Results) -> Result<(), String> {
    let state = ctx.state.clone();
    let nodes = ctx.nodes;
    println!("==> Tabby: kubectl create -f operator.yaml; kubectl create -f custom-resources.yaml");
    blocking(move || {
        kubectl(&state, &["create", "-f", "operator.yaml"])?;
        kubectl(&state, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
        kubectl(&state, &["create", "-f", "custom-resources.yaml"])?;
        sh::wait_until("TabbyStatus network", WAIT, || kubectl(&state, &["get", "tabbystatus", "network"]).is_ok())?;
        kubectl(&state, &["wait", "--for=condition=Available", "tabbystatus/network", "--timeout=300s"])?;
        reference::remove(&state, nodes)?;
        nodes_ready(&state, nodes)
    })
    .await?;
    // The agent's first line (its start) → its first network pass done (every cache listed, policy programmed).
    for i in 0..ctx.nodes {
        let log = agent_log(&ctx.client, i).await?;
        let at = |v: &Value| -> Option<k8s_openapi::jiff::Timestamp> { v["timestamp"].as_str()?.parse().ok() };
        let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
        let start = lines.iter().find_map(at);
        let pass = lines.iter().find(|v| v["message"] == "first network pass done").and_then(at);
        let (Some(start), Some(pass)) = (start, pass) else {
            return Err(format!("node-{i}: no start or first network pass in the agent's log"));
        };
        let ns = (pass.as_nanosecond() - start.as_nanosecond()).max(0);
        r.first.push(Duration::from_nanos(u64::try_from(ns).unwrap_or_default()));
    }
    r.peak_after("start (first full program)", &ctx.state, nodes, Controller::Tabby);
    phase(ctx, Controller::Tabby, r).await
}

async fn bench(
    cfg: &LabConfig,
    k: &Knobs,
    kube_router: &Path,
) -> Result<(Results, Results, Vec<Duration>, Duration), String> {
    daemon::start_cluster(cfg, Path::new(env!("CARGO_BIN_EXE_tabby-lab")), Instant::now())?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(cfg.state.join("kubeconfig")).map_err(|e| e.to_string())?,
        &Default::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let ctx = Ctx { state: cfg.state.clone(), nodes: cfg.nodes, client, seen: Arc::default(), k: k.clone() };
    watch(&ctx.client, &ctx.seen);

    println!("==> the reference plugins (ptp + host-local) on every node");
    let (state, nodes) = (ctx.state.clone(), ctx.nodes);
    blocking(move || {
        reference::install(&state, nodes, |i| reference::ptp_conflist(i, false))?;
        nodes_ready(&state, nodes)
    })
    .await?;
    println!(
        "==> scale objects in namespace {SCALE_NS}: {} nodes without kubelets, {} pods bound to them, {} policies",
        k.fake_nodes, k.pods, k.policies
    );
    let made = scale_objects(&ctx.client, k).await?;
    println!("    made in {:.1} s", made.as_secs_f64());
    let (settled, tainted) = fake_nodes_settled(&ctx.client).await?;
    println!(
        "    the node controller marked the fake nodes not ready {:.0} s later ({tainted} tainted unreachable by then)",
        settled.as_secs_f64()
    );
    println!("==> floor: {} host-network pods", k.new_pods);
    let floor = ready_floor(&ctx).await?;

    let (mut kr, mut tb) = (Results::default(), Results::default());
    if k.kube_router {
        kube_router_phase(&ctx, kube_router, &mut kr).await?;
    }
    if k.tabby {
        tabby_phase(&ctx, &mut tb).await?;
    }
    Ok((kr, tb, floor, made))
}

// ---------------------------------------------------------------------------------------------------------
// The table.

fn percentile(v: &[Duration], p: f64) -> Option<Duration> {
    let mut sorted = v.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    (!sorted.is_empty()).then(|| sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(10) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_table(k: &Knobs, tb: &Results, kr: &Results, floor: &[Duration], made: Duration) {
    println!(
        "\nNetwork policy, {} NetworkPolicies and {} pod objects in the cluster ({} nodes without kubelets), 3 real \
         nodes; Tabby vs kube-router {KUBE_ROUTER_VERSION} (firewall only) on Debian's ptp + host-local; scale objects \
         made in {:.0} s\n",
        k.policies,
        k.pods,
        k.fake_nodes,
        made.as_secs_f64()
    );
    println!("| measure | Tabby | kube-router | Tabby / kube-router | floor |");
    println!("|---|---|---|---|---|");
    let row = |what: &str, t: &[Duration], r: &[Duration], f: &[Duration], p: f64| {
        let (tp, rp) = (percentile(t, p), percentile(r, p));
        println!(
            "| {what}, p{p:.0} ({} / {}) | {} | {} | {} | {} |",
            t.len(),
            r.len(),
            ms(tp),
            ms(rp),
            ratio(secs(tp), secs(rp)),
            ms(percentile(f, p))
        );
    };
    let floors: Vec<Duration> = tb.policy_floor.iter().chain(&kr.policy_floor).copied().collect();
    for p in [50.0, 99.0] {
        row("policy created → enforced on every node", &tb.policy, &kr.policy, &floors, p);
    }
    for p in [50.0, 99.0] {
        row(
            "policy created → programmed (the controller's own time, slowest node)",
            &tb.policy_apply,
            &kr.policy_apply,
            &[],
            p,
        );
    }
    for p in [50.0, 99.0] {
        row("pod created → Ready", &tb.ready, &kr.ready, floor, p);
    }
    for p in [50.0, 99.0] {
        row("pod created → Ready with its policy enforced", &tb.ready_enforced, &kr.ready_enforced, floor, p);
    }
    for p in [50.0, 99.0] {
        row(
            "label change → set elements updated (the controller's own time)",
            &tb.label_apply,
            &kr.label_apply,
            &[],
            p,
        );
    }
    let floors: Vec<Duration> = tb.label_floor.iter().chain(&kr.label_floor).copied().collect();
    for p in [50.0, 99.0] {
        row("label change → verdict flips", &tb.label, &kr.label, &floors, p);
    }
    for p in [50.0, 99.0] {
        row(&format!("relabel into {} policies → enforced", k.policies), &tb.shared, &kr.shared, &[], p);
    }
    let tput = |r: &Results| match (mean(&r.tput_with), mean(&r.tput_none)) {
        (Some(w), Some(n)) if n > 0.0 => format!("{:.3} ({w:.2} / {n:.2} Gbit/s)", w / n),
        _ => "—".into(),
    };
    let tput_ratio = |r: &Results| match (mean(&r.tput_with), mean(&r.tput_none)) {
        (Some(w), Some(n)) if n > 0.0 => Some(w / n),
        _ => None,
    };
    println!(
        "| TCP throughput, {} policies on the pair / none (iperf3, across nodes) | {} | {} | {} | none = 1 |",
        k.policies,
        tput(tb),
        tput(kr),
        ratio(tput_ratio(tb), tput_ratio(kr))
    );
    let max_rss = |r: &Results| r.rss.iter().map(|(rss, _)| *rss).max();
    let max_hwm = |r: &Results| r.rss.iter().map(|(_, h)| *h).max();
    let show = |v: Option<u64>, h: Option<u64>| match (v, h) {
        (Some(v), Some(h)) => format!("{:.1} MiB (peak {:.1})", mib(v), mib(h)),
        _ => "—".into(),
    };
    println!(
        "| controller RSS, largest of the 3 nodes | {} | {} | {} | — |",
        show(max_rss(tb), max_hwm(tb)),
        show(max_rss(kr), max_hwm(kr)),
        ratio(max_rss(tb).map(|v| v as f64), max_rss(kr).map(|v| v as f64))
    );
    // Where each controller's peak was reached: its largest peak over the nodes after each step.
    let steps = |r: &Results| {
        let steps: Vec<String> = r.peaks.iter().map(|(s, p)| format!("{s} {:.1}", mib(*p))).collect();
        if steps.is_empty() { "—".to_string() } else { steps.join(" → ") }
    };
    println!("| controller peak RSS after each step of its phase, MiB | {} | {} | — | — |", steps(tb), steps(kr));
    if let Some(i) = tb.rss.iter().enumerate().max_by_key(|(_, (rss, _))| *rss).map(|(i, _)| i)
        && let Some(Some((used, free))) = tb.heap.get(i)
    {
        println!(
            "| Tabby's heap on that node, as the agent last reported it: in use / free inside it | {used:.1} / {free:.1} MiB | — | — | — |"
        );
    }
    if let Some(i) = tb.rss.iter().enumerate().max_by_key(|(_, (_, peak))| *peak).map(|(i, _)| i)
        && let Some(Some((used, free, before))) = tb.most_heap.get(i)
    {
        println!(
            "| Tabby's largest heap on the node of the peak RSS (its heap lines): in use / free inside it | {used:.1} / {free:.1} MiB (after: {before}) | — | — | — |"
        );
    }
    if let Some(i) = tb.rss.iter().enumerate().max_by_key(|(_, (rss, _))| *rss).map(|(i, _)| i)
        && let Some(Some((heap, anon, file))) = tb.parts.get(i)
    {
        println!(
            "| Tabby's RSS on that node by mapping: heap / other anonymous / files | {:.1} / {:.1} / {:.1} MiB | — | — | — |",
            mib(*heap),
            mib(*anon),
            mib(*file)
        );
    }
    let first = |r: &Results| r.first.iter().max().copied();
    println!(
        "| start → first full program at scale, slowest node | {} | {} | {} | — |",
        ms(first(tb)),
        ms(first(kr)),
        ratio(secs(first(tb)), secs(first(kr)))
    );
    println!(
        "\nTargets: every latency ≤ 0.25× kube-router's; p99 programming of a label change < 100 ms; throughput ≥ 0.97; RSS < 60 MiB."
    );
    let checks = [
        ("policy p99 ≤ 0.25×", percentile(&tb.policy, 99.0), percentile(&kr.policy, 99.0)),
        ("pod Ready+enforced p99 ≤ 0.25×", percentile(&tb.ready_enforced, 99.0), percentile(&kr.ready_enforced, 99.0)),
        ("label apply p99 ≤ 0.25×", percentile(&tb.label_apply, 99.0), percentile(&kr.label_apply, 99.0)),
        ("label verdict p99 ≤ 0.25×", percentile(&tb.label, 99.0), percentile(&kr.label, 99.0)),
    ];
    for (what, t, r) in checks {
        if let (Some(t), Some(r)) = (t, r) {
            let x = t.as_secs_f64() / r.as_secs_f64();
            println!("  {what}: {x:.2}× — {}", if x <= 0.25 { "met" } else { "missed" });
        }
    }
    if let (Some(c50), Some(c99)) = (percentile(&tb.label_compile, 50.0), percentile(&tb.label_compile, 99.0)) {
        println!(
            "  Tabby's label change on the server's node: compile and render (or the patch of the last compile: \
             {} of {}) p50 {} / p99 {} of the apply above, after the agent's 50 ms debounce of watch events",
            tb.label_patched,
            tb.label_compile.len(),
            ms(Some(c50)),
            ms(Some(c99))
        );
    }
    if let Some(p99) = percentile(&tb.label_apply, 99.0) {
        println!(
            "  label change programming p99 < 100 ms: {} — {}",
            ms(Some(p99)),
            if p99 < Duration::from_millis(100) { "met" } else { "missed" }
        );
    }
    let mut slow = tb.slow_passes.clone();
    slow.sort_by_key(|(_, ms, _)| std::cmp::Reverse(*ms));
    println!(
        "  Tabby's network passes over 200 ms during its phase: {}{}",
        slow.len(),
        slow.first().map(|(n, ms, p)| format!(" (slowest: node-{n} {ms} ms: {p})")).unwrap_or_default()
    );
    if let Some(x) = tput_ratio(tb) {
        println!("  throughput ratio ≥ 0.97: {x:.3} — {}", if x >= 0.97 { "met" } else { "missed" });
    }
    if let Some(v) = max_rss(tb) {
        println!("  agent RSS < 60 MiB: {:.1} MiB — {}", mib(v), if mib(v) < 60.0 { "met" } else { "missed" });
    }
}

fn main() {
    if !tabby_testkit::skip::is_root() {
        eprintln!("SKIP bench-policy: the lab needs root");
        std::process::exit(if tabby_e2e::in_ci() { 1 } else { 0 });
    }
    let env_dir = |var: &str, default: &str| {
        std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| tabby_e2e::repo_root().join(default))
    };
    let k = Knobs::from_env();
    let state = std::env::temp_dir().join(format!("tabby-lab-policy-{}", std::process::id()));
    let cfg = LabConfig {
        bin_dir: env_dir("TABBY_BIN_DIR", "target/lab-bin"),
        images: env_dir("TABBY_IMAGES", "target/images"),
        node_bin: env_dir("TABBY_NODE_BIN", ".cache/node/bin"),
        ..LabConfig::new(state.clone())
    };
    let kube_router = env_dir("TABBY_KUBE_ROUTER", ".cache/kube-router/bin/kube-router");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let result = rt.block_on(bench(&cfg, &k, &kube_router));
    if let Err(e) = daemon::down(&state) {
        eprintln!("lab down: {e}");
    }
    match result {
        Ok((kr, tb, floor, made)) => {
            print_table(&k, &tb, &kr, &floor, made);
            println!("\nbench-policy took {:.1} min", started.elapsed().as_secs_f64() / 60.0);
        }
        Err(e) => {
            eprintln!("bench-policy failed: {e}");
            std::process::exit(1);
        }
    }
}
