//! `tabby-lab up|serve|down|exec|node`: starting, running and removing the lab.
//!
//! `up` starts `serve` in the background (its own session, log in `<state>/lab.log`), waits until every node's
//! kubelet has registered, then installs Tabby exactly as README tells users. `serve` builds the cluster —
//! node network, control plane on node-0, the registry mirror, then on every node in parallel its namespaces,
//! containerd (images imported), kubelet and kube-proxy, then CoreDNS — keeps the node processes running, and
//! on SIGTERM removes everything. `down` stops `serve` and removes whatever a crashed lab left.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::node::LabNode;
use super::render::NodeFacts;
use super::{
    BRIDGE, GATEWAY, LINK_PREFIX, NETNS_PREFIX, NODE_NET6, PREFIX, PREFIX6, PodNetwork, REGISTRY_PORT, SERVICE_CIDR,
    SERVICE_CIDR6, addons, cgroups, pki, sh,
};
use crate::{ControlPlane, Options};

/// Where the lab keeps its state, how many nodes it has, and where Tabby's CLI and the images are.
#[derive(Clone, Debug)]
pub struct LabConfig {
    pub state: PathBuf,
    pub nodes: usize,
    /// Tabby's binaries on this machine (for `kubectl tabby`; the nodes run Tabby's image).
    pub bin_dir: PathBuf,
    /// The image archives and `images.json` (`cargo xtask images`).
    pub images: PathBuf,
    /// containerd, its shim and ctr (`make node-software`).
    pub node_bin: PathBuf,
    /// The pod network the nodes are set up for (kube-proxy's idea of pod traffic).
    pub pod_network: PodNetwork,
    /// IPv4 and IPv6: node addresses, Services, kubelets' node IPs.
    pub dual_stack: bool,
}

impl LabConfig {
    /// The defaults: 3 nodes, state in `state`, the repository's build outputs.
    pub fn new(state: PathBuf) -> LabConfig {
        let root = crate::repo_root();
        LabConfig {
            state,
            nodes: 3,
            bin_dir: root.join("target/lab-bin"),
            images: root.join("target/images"),
            node_bin: root.join(".cache/node/bin"),
            pod_network: PodNetwork::Tabby,
            dual_stack: false,
        }
    }
}

/// Whether `pid` runs (a zombie does not: it has exited and waits for its parent).
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn read_pid(state: &Path) -> Option<u32> {
    std::fs::read_to_string(state.join("serve.pid")).ok()?.trim().parse().ok()
}

/// A progress line: `==> [ 12s] what`, on stdout (`up`) or in lab.log (`serve`, echoed by `up`).
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
    start_cluster(cfg, self_exe, start)?;
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
    k(&["create", "-f", &root.join("operator.yaml").display().to_string()])?;
    k(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
    step(start, "kubectl create -f custom-resources.yaml");
    k(&["create", "-f", &root.join("custom-resources.yaml").display().to_string()])?;
    step(start, "kubectl wait --for=condition=Available tabbystatus/network");
    let deadline = Instant::now() + Duration::from_secs(300);
    while k(&["get", "tabbystatus", "network"]).is_err() {
        if Instant::now() > deadline {
            return Err("TabbyStatus network never appeared: is the operator running? \
                 (kubectl -n tabby-operator get pods; kubectl -n tabby-operator describe pods)"
                .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    k(&["wait", "--for=condition=Available", "tabbystatus/network", "--timeout=300s"])?;
    step(start, "the pod network is up");
    Ok(kubeconfig)
}

/// Starts `serve` in the background and waits until the cluster is up (every kubelet registered), echoing
/// its progress lines.
pub fn start_cluster(cfg: &LabConfig, self_exe: &Path, start: Instant) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.state).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(cfg.state.join("ready"));
    let log_path = cfg.state.join("lab.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    step(start, &format!("starting the lab: {} nodes (log: {})", cfg.nodes, log_path.display()));
    // setsid --fork: the lab runs in its own session and is nobody's child here (a test that starts it leaves
    // no zombie behind when it stops).
    let status = Command::new("setsid")
        .arg("--fork")
        .arg(self_exe)
        .arg("serve")
        .args(["--nodes", &cfg.nodes.to_string()])
        .arg("--state")
        .arg(&cfg.state)
        .arg("--bin")
        .arg(&cfg.bin_dir)
        .arg("--images")
        .arg(&cfg.images)
        .arg("--node-bin")
        .arg(&cfg.node_bin)
        .args(["--pod-network", cfg.pod_network.name()])
        .args(if cfg.dual_stack { &["--dual-stack"][..] } else { &[] })
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("starting the lab: {e}"))?;
    if !status.success() {
        return Err(format!("starting the lab: setsid {status}"));
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut echoed = 0;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in text.lines().skip(echoed) {
            if let Some(progress) = line.strip_prefix("==> ") {
                println!("    {progress}");
            }
            echoed += 1;
        }
        if cfg.state.join("ready").exists() {
            return Ok(());
        }
        if text.contains("lab failed") || Instant::now() > deadline {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("the lab did not start; {}:\n{}", log_path.display(), tail.join("\n")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The image references the lab needs to know by name, from `images.json`.
struct Images {
    dir: PathBuf,
    archives: Vec<PathBuf>,
    pause: String,
    coredns: String,
}

fn read_images(dir: &Path) -> Result<Images, String> {
    let path = dir.join("images.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (build the lab's images: make images)", path.display()))?;
    let entries: Vec<Value> = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let reference = |name: &str| -> Result<String, String> {
        entries
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["refs"][0].as_str())
            .map(String::from)
            .ok_or_else(|| format!("{}: no image named {name} (make images)", path.display()))
    };
    Ok(Images {
        dir: dir.to_path_buf(),
        archives: entries.iter().filter_map(|e| e["archive"].as_str()).map(|a| dir.join(a)).collect(),
        pause: reference("pause")?,
        coredns: reference("coredns")?,
    })
}

/// What `serve` created on this machine outside its state directory (mount points, cgroups), one per line in
/// `<state>/created`, so that `down` removes them even after a crash.
#[derive(Clone)]
struct Created {
    file: PathBuf,
    paths: Arc<Mutex<Vec<PathBuf>>>,
}

impl Created {
    fn add(&self, paths: Vec<PathBuf>) {
        let mut all = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(paths);
        let text: String = all.iter().map(|p| format!("{}\n", p.display())).collect();
        let _ = std::fs::write(&self.file, text);
    }
}

/// Removes what `created` lists, deepest first (directories only when empty).
fn remove_created(state: &Path) {
    let text = std::fs::read_to_string(state.join("created")).unwrap_or_default();
    let mut paths: Vec<PathBuf> = text.lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    paths.dedup();
    for path in paths {
        let _ = std::fs::remove_dir(&path);
    }
}

/// The lab itself (run in the background by `up`).
pub async fn serve(cfg: LabConfig) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.state).map_err(|e| e.to_string())?;
    std::fs::write(cfg.state.join("serve.pid"), std::process::id().to_string()).map_err(|e| e.to_string())?;
    let nodes: Vec<LabNode> = (0..cfg.nodes).map(|i| LabNode::new(&cfg.state, i)).collect();
    let created = Created { file: cfg.state.join("created"), paths: Arc::new(Mutex::new(Vec::new())) };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut cp = None;
    let result = serve_inner(&cfg, &nodes, &created, stop_rx, &mut cp).await;
    if let Err(e) = &result {
        println!("lab failed: {e}");
    }
    println!("stopping the lab");
    let _ = stop_tx.send(true);
    // The nodes' processes first (the kubelets would restart what the control plane's absence breaks), then
    // the control plane, then the namespaces it ran in.
    for node in &nodes {
        cgroups::kill_all(&node.cgroup_root, Duration::from_secs(10));
    }
    if let Some(cp) = cp {
        cp.stop();
    }
    for node in &nodes {
        node.destroy();
    }
    destroy_bridge();
    cgroups::remove(&cgroups::lab_root());
    remove_created(&cfg.state);
    let _ = std::fs::remove_file(cfg.state.join("ready"));
    let _ = std::fs::remove_file(cfg.state.join("serve.pid"));
    result
}

fn create_bridge(dual_stack: bool) -> Result<(), String> {
    sh::ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    sh::ip(&["addr", "add", &format!("{GATEWAY}/{PREFIX}"), "dev", BRIDGE])?;
    if dual_stack {
        sh::ip(&["addr", "add", &format!("{NODE_NET6}1/{PREFIX6}"), "dev", BRIDGE, "nodad"])?;
    }
    sh::ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

fn destroy_bridge() {
    let _ = sh::ip(&["link", "del", BRIDGE]);
}

async fn serve_inner(
    cfg: &LabConfig,
    nodes: &[LabNode],
    created: &Created,
    stop: tokio::sync::watch::Receiver<bool>,
    cp_slot: &mut Option<ControlPlane>,
) -> Result<(), String> {
    let start = Instant::now();
    let images = read_images(&cfg.images)?;
    for bin in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        if !cfg.node_bin.join(bin).is_file() {
            return Err(format!("{} is missing (make node-software)", cfg.node_bin.join(bin).display()));
        }
    }
    let family =
        if cfg.dual_stack { format!("192.168.100.0/24 and {NODE_NET6}/{PREFIX6}") } else { "192.168.100.0/24".into() };
    step(start, &format!("node network: bridge tabbylab0, {family}"));
    create_bridge(cfg.dual_stack)?;
    for node in nodes {
        node.create_network(cfg.dual_stack)?;
    }

    // Credentials: the kubelets' client CA and the API server's client certificate, node and kube-proxy tokens.
    let pki = pki::create(&cfg.state.join("pki"))?;
    let node_tokens: Vec<String> = nodes.iter().map(|_| pki::token()).collect::<Result<_, _>>()?;
    let proxy_token = pki::token()?;
    let mut tokens: Vec<String> =
        nodes.iter().zip(&node_tokens).map(|(n, t)| pki::node_token_line(t, &n.name)).collect();
    tokens.push(pki::proxy_token_line(&proxy_token));

    let control_plane = &nodes[0];
    step(start, &format!("control plane on {} ({})", control_plane.name, control_plane.address));
    let options = Options {
        controller_manager: true,
        scheduler: true,
        address: Some(control_plane.address),
        netns: Some(control_plane.netns.clone()),
        tokens,
        apiserver_flags: vec![
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!("--kubelet-client-certificate={}", pki.apiserver_kubelet_client_cert.display()),
            format!("--kubelet-client-key={}", pki.apiserver_kubelet_client_key.display()),
            // The node names are not in any DNS: reach kubelets by their InternalIP.
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
            // The `kubernetes` Service gets the real endpoint (the control-plane node's address).
            "--endpoint-reconciler-type=lease".into(),
            if cfg.dual_stack {
                format!("--service-cluster-ip-range={SERVICE_CIDR},{SERVICE_CIDR6}")
            } else {
                format!("--service-cluster-ip-range={SERVICE_CIDR}")
            },
        ],
        // Kubelets heartbeat here: the node lifecycle controller runs (taints, NotReady nodes' pods).
        controller_manager_flags: vec!["--controllers=*".into()],
    };
    let cp = ControlPlane::start_with(options).await.map_err(|e| e.to_string())?;
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
    let server = cp.server.clone();
    let cluster_ca = cfg.state.join("ca.crt");
    *cp_slot = Some(cp);

    // The registry mirror, for pulls of the images the lab built.
    let listener = tokio::net::TcpListener::bind((GATEWAY, REGISTRY_PORT))
        .await
        .map_err(|e| format!("registry mirror on {GATEWAY}:{REGISTRY_PORT}: {e}"))?;
    let images_dir = images.dir.clone();
    tokio::spawn(async move {
        if let Err(e) = super::registry::serve(listener, images_dir).await {
            println!("registry mirror stopped: {e}");
        }
    });

    // The nodes, in parallel: namespaces, configuration, containerd with the images, kubelet, kube-proxy.
    step(start, &format!("{} nodes: containerd (images imported), kubelet, kube-proxy", nodes.len()));
    let mut prepared = Vec::new();
    for (node, token) in nodes.iter().zip(&node_tokens) {
        let node = node.clone();
        let facts = NodeFacts {
            name: node.name.clone(),
            address: node.address,
            cgroup_root: node.cgroup_root.clone(),
            server: server.clone(),
            pause_image: images.pause.clone(),
            pod_network: cfg.pod_network,
        };
        let (token, proxy_token, ca, client_ca) =
            (token.clone(), proxy_token.clone(), cluster_ca.clone(), pki.kubelet_client_ca.clone());
        let created = created.clone();
        prepared.push(tokio::task::spawn_blocking(move || -> Result<LabNode, String> {
            let mut made = Vec::new();
            let result = node.create_namespaces(&mut made);
            created.add(made);
            result?;
            node.write_config(&facts, &token, &proxy_token, &ca, &client_ca)?;
            Ok(node)
        }));
    }
    let mut ready_nodes = Vec::new();
    for task in prepared {
        ready_nodes.push(task.await.map_err(|e| e.to_string())??);
    }
    let mut starts = Vec::new();
    for node in ready_nodes {
        let (cfg, stop, archives, server) = (cfg.clone(), stop.clone(), images.archives.clone(), server.clone());
        starts.push(tokio::task::spawn_blocking(move || start_node(&cfg, node, &archives, &server, stop)));
    }
    for task in starts {
        task.await.map_err(|e| e.to_string())??;
    }

    step(start, "kubelets registered; CoreDNS (kube-system/coredns, Service kube-dns)");
    let cp = cp_slot.as_ref().ok_or("control plane")?;
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &addons::coredns(&images.coredns));
    if !out.status.success() {
        return Err(format!("CoreDNS: {}", String::from_utf8_lossy(&out.stderr)));
    }
    // node-0 is the control-plane node (the role kubeadm labels; it stays schedulable, as a small cluster's).
    let _ = cp.kubectl(&["label", "node", &nodes[0].name, "node-role.kubernetes.io/control-plane=", "--overwrite"]);
    std::fs::write(cfg.state.join("ready"), "").map_err(|e| e.to_string())?;
    step(start, "lab ready");

    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Starts one node's containerd (then imports the images), kubelet and kube-proxy, each kept running until
/// `stop`; returns once the kubelet has registered the Node. Blocking (run on a blocking thread of the runtime,
/// where `supervise` can still spawn its tasks).
fn start_node(
    cfg: &LabConfig,
    node: LabNode,
    archives: &[PathBuf],
    server: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let node_bin = cfg.node_bin.clone();
    let cp_bin = crate::binary().parent().map(Path::to_path_buf).unwrap_or_default();
    let containerd = vec![
        node_bin.join("containerd").display().to_string(),
        "--config".into(),
        super::render::CONTAINERD_CONFIG.into(),
    ];
    supervise(&node, "containerd", containerd, &[&node_bin], stop.clone());
    // containerd is up when ctr can talk to it; then the images, so the kubelet finds them at once.
    let ctr = |args: &[&str]| {
        let mut argv = vec![node_bin.join("ctr").display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        node.command(&argv, &[&node_bin]).stdin(Stdio::null()).output()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctr(&["version"]).is_ok_and(|o| o.status.success()) {
        if Instant::now() > deadline {
            return Err(format!(
                "{}: containerd did not start; see {}",
                node.name,
                node.log_path("containerd").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for archive in archives {
        let a = archive.display().to_string();
        let out = ctr(&["-n", "k8s.io", "images", "import", "--no-unpack", &a]).map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("{}: importing {a}: {}", node.name, String::from_utf8_lossy(&out.stderr)));
        }
    }
    let kubelet = vec![
        cp_bin.join("kubelet").display().to_string(),
        format!("--config={}", super::render::KUBELET_CONFIG),
        format!("--kubeconfig={}", super::render::KUBELET_KUBECONFIG),
        format!("--hostname-override={}", node.name),
        if cfg.dual_stack {
            format!("--node-ip={},{}", node.address, node.address6())
        } else {
            format!("--node-ip={}", node.address)
        },
        "--root-dir=/var/lib/kubelet".into(),
        "--cert-dir=/var/lib/kubelet/pki".into(),
    ];
    supervise(&node, "kubelet", kubelet, &[&node_bin], stop.clone());
    let proxy =
        vec![cp_bin.join("kube-proxy").display().to_string(), format!("--config={}", super::render::PROXY_CONFIG)];
    supervise(&node, "kube-proxy", proxy, &[&node_bin], stop);
    // Registered: the Node object exists (the kubelet creates it with its own credentials).
    let kubectl = cp_bin.join("kubectl");
    let kubeconfig = cfg.state.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(&kubectl)
            .args(["get", "node", &node.name, "-o", "name"])
            .env("KUBECONFIG", &kubeconfig)
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: the kubelet did not register the node with {server}; see {}",
                node.name,
                node.log_path("kubelet").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `argv` on `node` with its output in the node's log for `component`, restarting it (after 2 s) when it
/// exits, as a node's service manager would, until `stop`.
fn supervise(
    node: &LabNode,
    component: &'static str,
    argv: Vec<String>,
    path_dirs: &[&Path],
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let node = node.clone();
    let path_dirs: Vec<PathBuf> = path_dirs.iter().map(|p| p.to_path_buf()).collect();
    tokio::spawn(async move {
        let log_path = node.log_path(component);
        loop {
            let dirs: Vec<&Path> = path_dirs.iter().map(PathBuf::as_path).collect();
            let mut command = tokio::process::Command::from(node.command(&argv, &dirs));
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path);
            let Ok(log) = log else { return };
            let Ok(err) = log.try_clone() else { return };
            command.stdin(Stdio::null()).stdout(log).stderr(err).kill_on_drop(true);
            let mut child = match command.spawn() {
                Ok(c) => c,
                Err(e) => {
                    println!("{}: starting {component}: {e}", node.name);
                    return;
                }
            };
            tokio::select! {
                status = child.wait() => {
                    if *stop.borrow() {
                        return;
                    }
                    println!("{}: {component} exited ({status:?}); restarting in 2 s", node.name);
                }
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => return,
            }
        }
    });
}

/// Stops the lab and removes everything it created, including what a crashed lab left behind.
pub fn down(state: &Path) -> Result<(), String> {
    if let Some(pid) = read_pid(state)
        && pid_alive(pid)
    {
        let _ = sh::run("kill", &["-TERM", &pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(90);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if pid_alive(pid) {
            let _ = sh::run("kill", &["-KILL", &pid.to_string()]);
        }
    }
    // Whatever a crashed lab left: the nodes' processes (by cgroup), namespaces, links, cgroups, mount points.
    for entry in std::fs::read_dir(state.join("nodes")).into_iter().flatten().flatten() {
        if let Some(index) =
            entry.file_name().to_string_lossy().strip_prefix("node-").and_then(|i| i.parse::<usize>().ok())
        {
            LabNode::new(state, index).destroy();
        }
    }
    let netns = sh::ip(&["netns", "list"]).unwrap_or_default();
    for name in netns.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(NETNS_PREFIX)) {
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
        if link.starts_with(LINK_PREFIX) || link == BRIDGE {
            let _ = sh::ip(&["link", "del", &link]);
        }
    }
    cgroups::remove(&cgroups::lab_root());
    remove_created(state);
    if state.exists() {
        std::fs::remove_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    }
    Ok(())
}

/// Runs `command` (`sh -c`) on lab node `node` (its namespaces): `make lab-node`.
pub fn exec_node(state: &Path, node: &str, command: &str) -> Result<std::process::ExitStatus, String> {
    let index: usize = node.strip_prefix("node-").and_then(|i| i.parse().ok()).ok_or("NODE is node-<n>")?;
    LabNode::new(state, index).shell(command).status().map_err(|e| e.to_string())
}

/// Runs `command` (`sh -c`) in pod `namespace/name` through `kubectl exec`: `make lab-exec`.
pub fn exec_pod(state: &Path, pod: &str, command: &str) -> Result<std::process::ExitStatus, String> {
    let (ns, name) = pod.split_once('/').ok_or("POD is namespace/name")?;
    Command::new(state.join("kubectl"))
        .args(["exec", "-n", ns, name, "--", "sh", "-c", command])
        .env("KUBECONFIG", state.join("kubeconfig"))
        .status()
        .map_err(|e| e.to_string())
}
