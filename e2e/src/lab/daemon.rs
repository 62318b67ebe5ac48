//! `tabby-lab up|serve|down|exec-pod|exec-node`: starting, running and removing the lab.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::runner::{LabEnv, Runner, pod_netns};
use super::{LabNode, REFERENCE_PLUGINS, create_bridge, destroy_bridge, sh};
use crate::{ControlPlane, Options};

/// Where the lab keeps its state, binaries and how many nodes it has.
#[derive(Clone, Debug)]
pub struct LabConfig {
    pub state: PathBuf,
    pub nodes: usize,
    pub bin_dir: PathBuf,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(state: &Path) -> Option<u32> {
    std::fs::read_to_string(state.join("serve.pid")).ok()?.trim().parse().ok()
}

fn step(start: Instant, what: &str) {
    println!("==> [{:>3}s] {what}", start.elapsed().as_secs());
}

/// Starts the lab in the background and installs Tabby as README tells users. Returns the kubeconfig path.
pub fn up(cfg: &LabConfig, self_exe: &Path) -> Result<PathBuf, String> {
    let start = Instant::now();
    if let Some(pid) = read_pid(&cfg.state)
        && pid_alive(pid)
    {
        return Err(format!("the lab is already running (pid {pid}); `make lab-down` first"));
    }
    std::fs::create_dir_all(&cfg.state).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(cfg.state.join("ready"));
    let log = std::fs::File::create(cfg.state.join("lab.log")).map_err(|e| e.to_string())?;
    step(
        start,
        &format!(
            "starting the control plane and {} lab nodes (log: {})",
            cfg.nodes,
            cfg.state.join("lab.log").display()
        ),
    );
    Command::new("setsid")
        .arg(self_exe)
        .args(["serve", "--nodes", &cfg.nodes.to_string(), "--state"])
        .arg(&cfg.state)
        .arg("--bin")
        .arg(&cfg.bin_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the lab: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cfg.state.join("ready").exists() {
        if Instant::now() > deadline
            || std::fs::read_to_string(cfg.state.join("lab.log")).unwrap_or_default().contains("lab failed")
        {
            return Err(format!("the lab did not start; see {}", cfg.state.join("lab.log").display()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let kubeconfig = cfg.state.join("kubeconfig");
    let kubectl = cfg.state.join("kubectl");
    let root = crate::repo_root();
    let k = |args: &[&str]| -> Result<String, String> {
        let out =
            Command::new(&kubectl).args(args).env("KUBECONFIG", &kubeconfig).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
        }
    };
    step(start, "kubectl create -f operator.yaml");
    k(&["create", "-f", root.join("operator.yaml").to_str().unwrap_or_default()])?;
    k(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
    step(start, "kubectl create -f custom-resources.yaml");
    k(&["create", "-f", root.join("custom-resources.yaml").to_str().unwrap_or_default()])?;
    step(start, "kubectl wait --for=condition=Available tabbystatus/network");
    let deadline = Instant::now() + Duration::from_secs(300);
    while k(&["get", "tabbystatus", "network"]).is_err() {
        if Instant::now() > deadline {
            return Err(
                "TabbyStatus network never appeared: is the operator running? (kubectl -n tabby-operator get pods)"
                    .into(),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    k(&["wait", "--for=condition=Available", "tabbystatus/network", "--timeout=300s"])?;
    step(start, "the pod network is up");
    Ok(kubeconfig)
}

/// The lab itself (run in the background by `up`): network, control plane, nodes and their runners.
pub async fn serve(cfg: LabConfig) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.state).map_err(|e| e.to_string())?;
    std::fs::write(cfg.state.join("serve.pid"), std::process::id().to_string()).map_err(|e| e.to_string())?;
    let nodes: Vec<LabNode> = (0..cfg.nodes).map(|i| LabNode::new(&cfg.state, i)).collect();
    let created = Arc::new(Mutex::new(Vec::new()));
    let result = serve_inner(&cfg, &nodes, created.clone()).await;
    for node in &nodes {
        node.destroy();
    }
    destroy_bridge();
    let mut created = created.lock().unwrap_or_else(|p| p.into_inner()).clone();
    created.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for path in created {
        let _ = if path.is_dir() { std::fs::remove_dir(&path) } else { std::fs::remove_file(&path) };
    }
    let _ = std::fs::remove_file(cfg.state.join("ready"));
    let _ = std::fs::remove_file(cfg.state.join("serve.pid"));
    result
}

async fn serve_inner(cfg: &LabConfig, nodes: &[LabNode], created: Arc<Mutex<Vec<PathBuf>>>) -> Result<(), String> {
    create_bridge()?;
    // Mount points of the node directories (each node binds its own copy over them).
    for d in super::NODE_DIRS {
        if let Some(created_dir) = sh::create_dir(Path::new(d)).map_err(|e| format!("{d}: {e}"))? {
            created.lock().unwrap_or_else(|p| p.into_inner()).push(created_dir);
        }
    }
    for node in nodes {
        node.create(Path::new(REFERENCE_PLUGINS))?;
        println!("node {} at {} (netns {})", node.name, node.address, node.netns);
    }
    let cp =
        ControlPlane::start_with(Options { controller_manager: true, scheduler: true, address: Some(super::GATEWAY) })
            .await
            .map_err(|e| e.to_string())?;
    std::fs::copy(cp.dir().join("ca.crt"), cfg.state.join("ca.crt")).map_err(|e| e.to_string())?;
    let kubeconfig = std::fs::read_to_string(&cp.kubeconfig)
        .map_err(|e| e.to_string())?
        .replace(&cp.dir().join("ca.crt").display().to_string(), &cfg.state.join("ca.crt").display().to_string());
    std::fs::write(cfg.state.join("kubeconfig"), kubeconfig).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(cfg.state.join("kubectl"));
    std::os::unix::fs::symlink(crate::binary(), cfg.state.join("kubectl")).map_err(|e| e.to_string())?;
    // The CLI as a kubectl plugin: `kubectl tabby …` with the lab directory on the PATH.
    let _ = std::fs::remove_file(cfg.state.join("kubectl-tabby"));
    let _ = std::os::unix::fs::symlink(cfg.bin_dir.join("kubectl-tabby"), cfg.state.join("kubectl-tabby"));
    println!("control plane at {}", cp.server);

    let client = cp.client();
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes {
        let object: Node = serde_json::from_value(json!({"metadata": {"name": node.name,
            "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": node.name, "kubernetes.io/arch": std::env::consts::ARCH}}}))
            .map_err(|e| e.to_string())?;
        api.create(&PostParams::default(), &object).await.map_err(|e| format!("Node {}: {e}", node.name))?;
        let t = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = json!({"status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "LabNodeRunner", "message": "lab node runner", "lastHeartbeatTime": t, "lastTransitionTime": t}],
            "addresses": [{"type": "InternalIP", "address": node.address.to_string()}, {"type": "Hostname", "address": node.name}],
            "nodeInfo": {"kubeletVersion": "lab", "operatingSystem": "linux", "architecture": std::env::consts::ARCH, "containerRuntimeVersion": "tabby-lab://runner",
                         "kernelVersion": "", "osImage": "", "bootID": "", "machineID": "", "systemUUID": "", "kubeProxyVersion": ""}
        }});
        api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| format!("Node {} status: {e}", node.name))?;
    }
    let port: u16 = cp.server.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("server port")?;
    let env = LabEnv {
        client,
        kubeconfig: cp.kubeconfig.clone(),
        kubectl: cp.kubectl.clone(),
        api_host: super::GATEWAY.to_string(),
        api_port: port,
        ca: cp.dir().join("ca.crt"),
        bin_dir: cfg.bin_dir.clone(),
        state: cfg.state.clone(),
        created,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let runners: Vec<_> =
        nodes.iter().map(|n| tokio::spawn(Runner::new(env.clone(), n.clone()).run(stop_rx.clone()))).collect();
    std::fs::write(cfg.state.join("ready"), "").map_err(|e| e.to_string())?;
    println!("lab ready");

    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("stopping the lab");
    let _ = stop_tx.send(true);
    for r in runners {
        let _ = r.await;
    }
    cp.stop();
    Ok(())
}

/// Stops the lab and removes everything it created.
pub fn down(state: &Path) -> Result<(), String> {
    if let Some(pid) = read_pid(state)
        && pid_alive(pid)
    {
        let _ = sh::run("kill", &["-TERM", &pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if pid_alive(pid) {
            let _ = sh::run("kill", &["-KILL", &pid.to_string()]);
        }
    }
    // Whatever a crashed lab left: processes in lab namespaces, the namespaces, the links.
    let netns = sh::ip(&["netns", "list"]).unwrap_or_default();
    for name in netns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("tabby-node-") || n.starts_with("tabby-pod-"))
    {
        for pid in sh::ip(&["netns", "pids", name]).unwrap_or_default().split_whitespace() {
            let _ = sh::run("kill", &["-KILL", pid]);
        }
        let _ = sh::ip(&["netns", "del", name]);
    }
    let links = sh::ip(&["-o", "link", "show"]).unwrap_or_default();
    for link in links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|l| l.trim().split('@').next().unwrap_or_default().to_string())
    {
        if link.starts_with("tlab") || link == super::BRIDGE {
            let _ = sh::ip(&["link", "del", &link]);
        }
    }
    if state.exists() {
        std::fs::remove_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    }
    Ok(())
}

/// Runs `command` in pod `namespace/name`'s network namespace.
pub fn exec_pod(state: &Path, pod: &str, command: &str) -> Result<std::process::ExitStatus, String> {
    let (ns, name) = pod.split_once('/').ok_or("POD is namespace/name")?;
    let out = Command::new(state.join("kubectl"))
        .args(["get", "pod", "-n", ns, name, "-o", "jsonpath={.metadata.uid}"])
        .env("KUBECONFIG", state.join("kubeconfig"))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let uid = String::from_utf8_lossy(&out.stdout).into_owned();
    Command::new("ip")
        .args(["netns", "exec", &pod_netns(&uid), "sh", "-c", command])
        .status()
        .map_err(|e| e.to_string())
}

/// Runs `command` on lab node `node` (its network namespace and its node directories).
pub fn exec_node(state: &Path, node: &str, command: &str) -> Result<std::process::ExitStatus, String> {
    let index: usize = node.strip_prefix("node-").and_then(|i| i.parse().ok()).ok_or("NODE is node-<n>")?;
    let node = LabNode::new(state, index);
    super::sh::in_node(&node.netns, &node.node_binds(), None, &["sh".into(), "-c".into(), command.into()])
        .status()
        .map_err(|e| e.to_string())
}
