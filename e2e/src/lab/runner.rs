//! The lab's node runner: a stand-in for the kubelet and container runtime of one lab node (test
//! infrastructure; a real kubelet + containerd replace it later).
//!
//! Every second it lists the pods bound to its node and converges: host-network pods get their containers
//! run as processes in the node (init containers to completion first, then the rest; restarted by the pod's
//! restart policy with back-off; readiness, liveness and startup HTTP/exec probes); other pods get a network
//! namespace wired by the installed CNI plugin. Their status (phase, IPs, Ready, container states, restarts,
//! CrashLoopBackOff) is reported to the API; deleted pods are stopped (SIGTERM, then SIGKILL after the grace
//! period) or unwired (CNI DEL) and then removed, as a kubelet confirms a deletion.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::LabNode;
use super::cni::{self, Attachment};
use super::sh::{self, Bind};

/// What every runner needs to know about the lab.
#[derive(Clone)]
pub struct LabEnv {
    pub client: Client,
    /// Admin kubeconfig (to mint service account tokens with kubectl).
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// The API server as pods see it.
    pub api_host: String,
    pub api_port: u16,
    /// CA of the API server's certificate.
    pub ca: PathBuf,
    /// Where Tabby's binaries are (first on the PATH of every container).
    pub bin_dir: PathBuf,
    /// The lab's state directory.
    pub state: PathBuf,
    /// Directories created on this machine as mount points (removed by `lab down`).
    pub created: Arc<Mutex<Vec<PathBuf>>>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

struct ContainerRun {
    spec: Container,
    child: Option<Child>,
    restarts: i32,
    next_start: Instant,
    started_at: Option<String>,
    last_exit: Option<i32>,
    started: bool,
    ready: bool,
    live_failures: i32,
    last_probe: Instant,
}

struct HostPod {
    pod: Pod,
    init_done: bool,
    init_failed: Option<String>,
    containers: Vec<ContainerRun>,
    sa_dir: Option<PathBuf>,
    last_status: Value,
}

struct SandboxPod {
    netns: String,
    attachment: Attachment,
    result: Option<Value>,
    error: Option<String>,
    next_try: Instant,
    last_status: Value,
}

enum PodRun {
    Host(Box<HostPod>),
    Sandbox(Box<SandboxPod>),
}

/// The runner of one node.
pub struct Runner {
    env: LabEnv,
    node: LabNode,
    pods: HashMap<String, PodRun>,
}

/// Network namespace of a (non-host-network) pod.
pub fn pod_netns(uid: &str) -> String {
    format!("tabby-pod-{}", &uid.replace('-', "")[..12.min(uid.len())])
}

impl Runner {
    pub fn new(env: LabEnv, node: LabNode) -> Self {
        Runner { env, node, pods: HashMap::new() }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.env.state.join("pods").join(uid)
    }

    /// Converges until `stop` turns true, then stops every pod.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.sync().await {
                eprintln!("lab runner {}: {e}", self.node.name);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => break,
            }
        }
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            self.stop_pod(&uid, Duration::from_secs(5)).await;
        }
    }

    async fn sync(&mut self) -> Result<(), String> {
        let api: Api<Pod> = Api::all(self.env.client.clone());
        let pods = api
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", self.node.name)))
            .await
            .map_err(|e| format!("listing pods: {e}"))?
            .items;
        let present: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        for uid in self.pods.keys().cloned().collect::<Vec<_>>() {
            if !present.contains(&uid) {
                self.stop_pod(&uid, Duration::from_secs(2)).await;
            }
        }
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let pods_api: Api<Pod> = Api::namespaced(self.env.client.clone(), &pod.namespace().unwrap_or_default());
            if pod.metadata.deletion_timestamp.is_some() {
                let grace =
                    pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).clamp(0, 30)
                        as u64;
                self.stop_pod(&uid, Duration::from_secs(grace)).await;
                let _ = pods_api
                    .delete(&pod.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                    .await;
                continue;
            }
            let host = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
            if !self.pods.contains_key(&uid) {
                let run = if host { self.new_host_pod(pod.clone()) } else { self.new_sandbox(&pod) };
                self.pods.insert(uid.clone(), run);
            }
            let status = match self.pods.get_mut(&uid) {
                Some(PodRun::Host(h)) => {
                    h.pod = pod.clone();
                    step_host(&self.env, &self.node, h).await
                }
                Some(PodRun::Sandbox(s)) => step_sandbox(&self.node, &pod, s).await,
                None => None,
            };
            if let Some(status) = status {
                let _ = pods_api
                    .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
                    .await;
            }
        }
        Ok(())
    }

    fn new_host_pod(&self, pod: Pod) -> PodRun {
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec.containers.iter().map(|c| ContainerRun {
            spec: c.clone(),
            child: None,
            restarts: 0,
            next_start: Instant::now(),
            started_at: None,
            last_exit: None,
            started: false,
            ready: false,
            live_failures: 0,
            last_probe: Instant::now() - Duration::from_secs(3600),
        });
        PodRun::Host(Box::new(HostPod {
            pod,
            init_done: false,
            init_failed: None,
            containers: containers.collect(),
            sa_dir: None,
            last_status: Value::Null,
        }))
    }

    fn new_sandbox(&self, pod: &Pod) -> PodRun {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let netns = pod_netns(&uid);
        PodRun::Sandbox(Box::new(SandboxPod {
            attachment: Attachment {
                container_id: uid.replace('-', ""),
                netns_path: format!("/var/run/netns/{netns}"),
                ifname: "eth0".into(),
                namespace: pod.namespace().unwrap_or_default(),
                pod: pod.name_any(),
            },
            netns,
            result: None,
            error: None,
            next_try: Instant::now(),
            last_status: Value::Null,
        }))
    }

    async fn stop_pod(&mut self, uid: &str, grace: Duration) {
        let Some(run) = self.pods.remove(uid) else { return };
        match run {
            PodRun::Host(mut h) => {
                for c in &mut h.containers {
                    if let Some(child) = c.child.as_mut() {
                        let _ = sh::run("kill", &["-TERM", &child.id().to_string()]);
                    }
                }
                let deadline = Instant::now() + grace;
                for c in &mut h.containers {
                    if let Some(mut child) = c.child.take() {
                        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            }
            PodRun::Sandbox(s) => {
                let node = self.node.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = cni::del(&node, &s.attachment, s.result.as_ref()) {
                        eprintln!("lab runner {}: CNI DEL {}: {e}", node.name, s.attachment.pod);
                    }
                    let _ = sh::ip(&["netns", "del", &s.netns]);
                })
                .await;
            }
        }
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
    }
}

/// One step of a host-network pod; returns its status when it changed.
async fn step_host(env: &LabEnv, node: &LabNode, h: &mut HostPod) -> Option<Value> {
    let uid = h.pod.metadata.uid.clone().unwrap_or_default();
    let spec = h.pod.spec.clone().unwrap_or_default();
    let dir = env.state.join("pods").join(&uid);
    let _ = std::fs::create_dir_all(&dir);
    if h.sa_dir.is_none() {
        match service_account(env, &h.pod, &dir) {
            Ok(d) => h.sa_dir = d,
            Err(e) => {
                h.init_failed = Some(e);
                return status_if_changed(h, node);
            }
        }
    }
    if !h.init_done {
        for init in spec.init_containers.iter().flatten() {
            let cmd = container_command(env, node, &h.pod, init, h.sa_dir.as_deref(), &dir).await;
            let result = match cmd {
                Ok(mut cmd) => tokio::task::spawn_blocking(move || cmd.status())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                Err(e) => Err(e),
            };
            match result {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    h.init_failed = Some(format!("init container {} exited with {s}", init.name));
                    return status_if_changed(h, node);
                }
                Err(e) => {
                    h.init_failed = Some(format!("init container {}: {e}", init.name));
                    return status_if_changed(h, node);
                }
            }
        }
        h.init_done = true;
        h.init_failed = None;
    }
    let restart_always = spec.restart_policy.as_deref().unwrap_or("Always") == "Always";
    for c in &mut h.containers {
        if let Some(child) = c.child.as_mut()
            && let Ok(Some(exit)) = child.try_wait()
        {
            c.child = None;
            c.last_exit = exit.code().or(Some(137));
            c.ready = false;
            c.started = false;
            let backoff = Duration::from_secs((1u64 << c.restarts.min(5)).min(30));
            c.next_start = Instant::now() + backoff;
        }
        if c.child.is_none() && Instant::now() >= c.next_start && (restart_always || c.last_exit.is_none()) {
            match container_command(env, node, &h.pod, &c.spec, h.sa_dir.as_deref(), &dir).await {
                Ok(mut cmd) => match cmd.spawn() {
                    Ok(child) => {
                        if c.started_at.is_some() {
                            c.restarts += 1;
                        }
                        c.child = Some(child);
                        c.started_at = Some(now());
                        c.live_failures = 0;
                        c.last_probe = Instant::now() - Duration::from_secs(3600);
                    }
                    Err(e) => eprintln!("lab runner {}: starting {}: {e}", node.name, c.spec.name),
                },
                Err(e) => eprintln!("lab runner {}: {}: {e}", node.name, c.spec.name),
            }
        }
        if c.child.is_some() {
            probe_container(node, c);
        }
    }
    status_if_changed(h, node)
}

fn probe_period(p: &Probe) -> Duration {
    Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64)
}

/// Runs the container's probes when their period has passed (HTTP GET or exec, inside the node).
fn probe_container(node: &LabNode, c: &mut ContainerRun) {
    let startup = c.spec.startup_probe.clone();
    let period = if !c.started {
        startup.as_ref().map(probe_period)
    } else {
        c.spec.readiness_probe.as_ref().or(c.spec.liveness_probe.as_ref()).map(probe_period)
    };
    let period = period.unwrap_or(Duration::from_secs(2)).min(Duration::from_secs(2));
    if c.last_probe.elapsed() < period {
        return;
    }
    c.last_probe = Instant::now();
    if !c.started {
        c.started = startup.as_ref().is_none_or(|p| probe(node, p));
        if !c.started {
            return;
        }
    }
    c.ready = c.spec.readiness_probe.as_ref().is_none_or(|p| probe(node, p));
    if let Some(live) = &c.spec.liveness_probe {
        if probe(node, live) {
            c.live_failures = 0;
        } else {
            c.live_failures += 1;
            if c.live_failures >= live.failure_threshold.unwrap_or(3)
                && let Some(child) = c.child.as_mut()
            {
                let _ = child.kill();
            }
        }
    }
}

fn probe(node: &LabNode, p: &Probe) -> bool {
    let timeout = p.timeout_seconds.unwrap_or(1).max(1).to_string();
    if let Some(http) = &p.http_get {
        let port = match &http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        };
        let host = http.host.clone().unwrap_or_else(|| node.address.to_string());
        let url = format!("http://{host}:{port}{}", http.path.as_deref().unwrap_or("/"));
        return sh::run("ip", &["netns", "exec", &node.netns, "curl", "-sf", "-o", "/dev/null", "-m", &timeout, &url])
            .is_ok();
    }
    if let Some(exec) = &p.exec {
        let argv = exec.command.clone().unwrap_or_default();
        return sh::in_node(&node.netns, &node.node_binds(), None, &argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    }
    true
}

fn status_if_changed(h: &mut HostPod, node: &LabNode) -> Option<Value> {
    let mut statuses = Vec::new();
    for c in &h.containers {
        let state = match (&c.child, c.last_exit) {
            (Some(_), _) => json!({"running": {"startedAt": c.started_at}}),
            (None, Some(code)) if c.restarts > 0 || code != 0 => {
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting {} (last exit code {code})", c.spec.name)}})
            }
            _ => {
                json!({"waiting": {"reason": if h.init_failed.is_some() { "PodInitializing" } else { "ContainerCreating" }}})
            }
        };
        statuses.push(
            json!({"name": c.spec.name, "image": c.spec.image, "imageID": "", "ready": c.ready && c.child.is_some(),
                             "started": c.started, "restartCount": c.restarts, "state": state}),
        );
    }
    let ready = h.init_done && h.containers.iter().all(|c| c.child.is_some() && c.ready);
    let flag = |b: bool| if b { "True" } else { "False" };
    let mut status = json!({
        "phase": if h.init_done { "Running" } else { "Pending" },
        "hostIP": node.address.to_string(),
        "podIP": node.address.to_string(),
        "podIPs": [{"ip": node.address.to_string()}],
        "containerStatuses": statuses,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": flag(h.init_done), "message": h.init_failed.clone().unwrap_or_default()},
            {"type": "ContainersReady", "status": flag(ready)},
            {"type": "Ready", "status": flag(ready)}
        ]
    });
    if status == h.last_status {
        return None;
    }
    h.last_status = status.clone();
    stamp_reported(&mut status);
    Some(status)
}

/// Sets the times of a status being reported, as a kubelet does: start time and condition transitions.
/// (They stay out of the copy a change is detected on, or every status would differ.)
fn stamp_reported(status: &mut Value) {
    let t = now();
    status["startTime"] = json!(t);
    for c in status["conditions"].as_array_mut().into_iter().flatten() {
        c["lastTransitionTime"] = json!(t);
    }
}

/// One step of a pod wired by CNI; returns its status when it changed.
async fn step_sandbox(node: &LabNode, pod: &Pod, s: &mut SandboxPod) -> Option<Value> {
    if s.result.is_none() && Instant::now() >= s.next_try {
        let (node2, netns, a) = (node.clone(), s.netns.clone(), s.attachment.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            if !Path::new(&a.netns_path).exists() {
                sh::ip(&["netns", "add", &netns])?;
                sh::ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            }
            cni::add(&node2, &a)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match outcome {
            Ok(result) => {
                s.result = Some(result);
                s.error = None;
            }
            Err(e) => {
                s.error = Some(e);
                s.next_try = Instant::now() + Duration::from_secs(3);
            }
        }
    }
    let ips = s.result.as_ref().map(cni::ips).unwrap_or_default();
    let ready = s.result.is_some();
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|sp| sp.containers.iter().map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready, "restartCount": 0,
            "state": if ready { json!({"running": {"startedAt": now()}}) } else { json!({"waiting": {"reason": "ContainerCreating", "message": s.error.clone().unwrap_or_default()}}) }})).collect())
        .unwrap_or_default();
    let flag = |b: bool| if b { "True" } else { "False" };
    let mut status = json!({
        "phase": if ready { "Running" } else { "Pending" },
        "hostIP": node.address.to_string(),
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag(ready)},
            {"type": "Ready", "status": flag(ready), "message": s.error.clone().unwrap_or_default()}
        ],
        "containerStatuses": containers.iter().map(|c| { let mut c = c.clone(); c["state"] = if ready { json!({"running": {}}) } else { c["state"].clone() }; c }).collect::<Vec<_>>()
    });
    if let Some(ip) = ips.first() {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    }
    if status == s.last_status {
        return None;
    }
    s.last_status = status.clone();
    stamp_reported(&mut status);
    status["containerStatuses"] = json!(containers);
    Some(status)
}

/// Mints a token for the pod's service account and lays out what a kubelet projects into
/// /var/run/secrets/kubernetes.io/serviceaccount.
fn service_account(env: &LabEnv, pod: &Pod, dir: &Path) -> Result<Option<PathBuf>, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.automount_service_account_token == Some(false) {
        return Ok(None);
    }
    let sa = spec.service_account_name.unwrap_or_else(|| "default".into());
    let ns = pod.namespace().unwrap_or_default();
    let out = std::process::Command::new(&env.kubectl)
        .args(["create", "token", &sa, "-n", &ns, "--duration=24h"])
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("token for {ns}/{sa}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let sa_dir = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa_dir).map_err(|e| e.to_string())?;
    std::fs::write(sa_dir.join("token"), String::from_utf8_lossy(&out.stdout).trim()).map_err(|e| e.to_string())?;
    std::fs::copy(&env.ca, sa_dir.join("ca.crt")).map_err(|e| e.to_string())?;
    std::fs::write(sa_dir.join("namespace"), &ns).map_err(|e| e.to_string())?;
    // Containers may run as another user (the operator runs as 65532).
    for f in ["token", "ca.crt", "namespace"] {
        let _ = sh::run("chmod", &["0644", &sa_dir.join(f).display().to_string()]);
    }
    let _ = sh::run("chmod", &["0755", &dir.display().to_string(), &sa_dir.display().to_string()]);
    Ok(Some(sa_dir))
}

async fn resolve_env(
    env: &LabEnv,
    node: &LabNode,
    pod: &Pod,
    c: &Container,
) -> Result<BTreeMap<String, String>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut vars = BTreeMap::new();
    for v in c.env.iter().flatten() {
        let value = if let Some(value) = &v.value {
            value.clone()
        } else if let Some(from) = &v.value_from {
            if let Some(f) = &from.field_ref {
                match f.field_path.as_str() {
                    "spec.nodeName" => node.name.clone(),
                    "metadata.name" => pod.name_any(),
                    "metadata.namespace" => ns.clone(),
                    "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                    "status.podIP" | "status.hostIP" => node.address.to_string(),
                    "spec.serviceAccountName" => {
                        pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default()
                    }
                    other => return Err(format!("env {}: unsupported fieldRef {other}", v.name)),
                }
            } else if let Some(k) = &from.config_map_key_ref {
                let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &ns)
                    .get(&k.name)
                    .await
                    .map_err(|e| format!("env {}: ConfigMap {}: {e}", v.name, k.name))?;
                cm.data
                    .and_then(|d| d.get(&k.key).cloned())
                    .ok_or_else(|| format!("env {}: no key {} in ConfigMap {}", v.name, k.key, k.name))?
            } else if let Some(k) = &from.secret_key_ref {
                let s = Api::<Secret>::namespaced(env.client.clone(), &ns)
                    .get(&k.name)
                    .await
                    .map_err(|e| format!("env {}: Secret {}: {e}", v.name, k.name))?;
                let bytes = s
                    .data
                    .and_then(|d| d.get(&k.key).cloned())
                    .ok_or_else(|| format!("env {}: no key {} in Secret {}", v.name, k.key, k.name))?;
                String::from_utf8_lossy(&bytes.0).into_owned()
            } else {
                return Err(format!("env {}: unsupported valueFrom", v.name));
            }
        } else {
            String::new()
        };
        vars.insert(v.name.clone(), value);
    }
    Ok(vars)
}

/// The command that runs container `c` of `pod` on `node`: command and args, resolved env, hostPath volumes
/// bind-mounted at their mount paths, the service account token, the container's user.
async fn container_command(
    env: &LabEnv,
    node: &LabNode,
    pod: &Pod,
    c: &Container,
    sa: Option<&Path>,
    dir: &Path,
) -> Result<std::process::Command, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    if argv.is_empty() {
        return Err(format!("container {} has no command (the lab runs no images)", c.name));
    }
    let mut binds = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let volume =
            spec.volumes.iter().flatten().find(|v| v.name == m.name).ok_or_else(|| format!("no volume {}", m.name))?;
        if volume.projected.is_some() || volume.empty_dir.is_some() {
            // The service account projection (kube-api-access-*) gets the token the runner minted; an
            // emptyDir is a directory of the pod's own.
            let source = if volume.projected.is_some() {
                sa.map(Path::to_path_buf).ok_or_else(|| format!("volume {}: no service account token", m.name))?
            } else {
                let d = dir.join("volumes").join(&m.name);
                std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                d
            };
            if let Some(created) = sh::create_dir(Path::new(&m.mount_path)).map_err(|e| e.to_string())? {
                env.created.lock().unwrap_or_else(|p| p.into_inner()).push(created);
            }
            binds.push(Bind {
                source: source.display().to_string(),
                target: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            });
            continue;
        }
        let Some(hp) = &volume.host_path else {
            return Err(format!(
                "volume {}: the lab supports hostPath, emptyDir and the service account projection",
                m.name
            ));
        };
        let source = node.host_path(&hp.path);
        let file = hp.type_.as_deref() == Some("FileOrCreate") || hp.type_.as_deref() == Some("File");
        if file {
            if let Some(parent) = source.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if !source.exists() {
                std::fs::write(&source, "").map_err(|e| format!("{}: {e}", source.display()))?;
            }
            let target = Path::new(&m.mount_path);
            if !target.exists() {
                if let Some(parent) = target.parent()
                    && let Some(created) = sh::create_dir(parent).map_err(|e| e.to_string())?
                {
                    env.created.lock().unwrap_or_else(|p| p.into_inner()).push(created);
                }
                std::fs::write(target, "").map_err(|e| format!("{}: {e}", target.display()))?;
                env.created.lock().unwrap_or_else(|p| p.into_inner()).push(target.to_path_buf());
            }
        } else {
            std::fs::create_dir_all(&source).map_err(|e| format!("{}: {e}", source.display()))?;
            if let Some(created) = sh::create_dir(Path::new(&m.mount_path)).map_err(|e| e.to_string())? {
                env.created.lock().unwrap_or_else(|p| p.into_inner()).push(created);
            }
        }
        binds.push(Bind {
            source: source.display().to_string(),
            target: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    let sa_target = "/var/run/secrets/kubernetes.io/serviceaccount";
    if let Some(sa) = sa.filter(|_| !binds.iter().any(|b| b.target == sa_target)) {
        let target = sa_target;
        if let Some(created) = sh::create_dir(Path::new(target)).map_err(|e| e.to_string())? {
            env.created.lock().unwrap_or_else(|p| p.into_inner()).push(created);
        }
        binds.push(Bind { source: sa.display().to_string(), target: target.into(), read_only: true });
    }
    // Parents before children.
    binds.sort_by_key(|b| b.target.matches('/').count());
    let uid = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user));
    let vars = resolve_env(env, node, pod, c).await?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.log", c.name)))
        .map_err(|e| e.to_string())?;
    let mut cmd = sh::in_node(&node.netns, &binds, uid, &argv);
    cmd.env_clear()
        .env("PATH", format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", env.bin_dir.display()))
        .env("HOME", "/root")
        .env("HOSTNAME", &node.name)
        .env("KUBERNETES_SERVICE_HOST", &env.api_host)
        .env("KUBERNETES_SERVICE_PORT", env.api_port.to_string())
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    Ok(cmd)
}
