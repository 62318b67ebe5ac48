//! A lab of nodes for the node-network tests and benchmarks: network namespaces as nodes, joined by
//! bridges in an "underlay" namespace that also routes between subnets and plays the internet
//! (203.0.113.1 on its loopback); a real control plane reached from each node namespace through a
//! loopback forwarder; agents as real processes inside the node namespaces; pods wired by the real `tabby`
//! CNI plugin. Every address, link and route lives in namespaces the lab creates; everything goes away on
//! drop.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tabby_wire::proto::{self, Op};

use crate::cluster::spawn_agent;
pub use crate::netns::Netns;
use crate::netns::{self};
use crate::poll::wait;
pub use crate::process::{agent_bin, plugin_bin, sh};
use crate::process::{next_seq, unique};
use crate::skip::require_lab;
pub use crate::skip::{require_root, require_tools};
use crate::{ControlPlane, Options, repo_root, start_or_skip};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Lab tests run one at a time (each starts a control plane, agents and BGP sessions on port 179).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwards 127.0.0.1:`port` inside a namespace to 127.0.0.1:`port` of the test's namespace (the API
/// server listens on loopback only).
struct Forwarder {
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(ns: &Netns, port: u16) -> Forwarder {
        let host = netns::current().expect("own netns");
        let path = ns.path.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            netns::enter(&path).expect("setns");
            let l = TcpListener::bind(("127.0.0.1", port)).expect("bind forwarder");
            l.set_nonblocking(true).expect("nonblocking");
            netns::enter_file(&host).expect("back to the host netns");
            let _ = tx.send(());
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        if let Ok(out) = TcpStream::connect(("127.0.0.1", port)) {
                            pipe(inside, out);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let _ = rx.recv_timeout(Duration::from_secs(5));
        Forwarder { stop }
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    std::thread::spawn(move || {
        let (mut r, mut w) = (a, b);
        let _ = std::io::copy(&mut r, &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut r, mut w) = (b2, a2);
        let _ = std::io::copy(&mut r, &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A lab node: its namespace, address and agent.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub addr: String,
    pub dir: PathBuf,
    pub agent: Option<Child>,
    env: Vec<(String, String)>,
    kubeconfig: PathBuf,
    _fwd: Forwarder,
}

impl Node {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Starts (or restarts) the agent inside the node namespace.
    pub fn start_agent(&mut self) {
        let env: Vec<(String, String)> = [
            ("TABBY_IPAM_GC", "Disabled"),
            ("TABBY_IP_AUTODETECTION_METHOD", "interface=eth0"),
            ("TABBY_BGP_HOLD_TIME", "9"),
            ("RUST_LOG", "tabby_agent=debug,tabby_bgp=debug,warn"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(self.env.iter().cloned())
        .collect();
        self.agent = Some(spawn_agent(Some(&self.ns), &self.kubeconfig, &self.name, &self.dir, &env));
    }

    /// Sets the environment the agent gets when it next starts (beside the lab's own settings).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    pub fn kill_agent(&mut self, signal: &str) {
        if let Some(mut c) = self.agent.take() {
            let _ = Command::new("kill").args([signal, &c.id().to_string()]).output();
            let _ = c.wait();
        }
    }

    pub fn wait_ready(&self) {
        wait(&format!("agent {} ready", self.name), Duration::from_secs(90)).until(
            || proto::call(&self.socket(), Op::Status, Duration::from_secs(5)).is_ok_and(|r| r.ready),
            || format!("log:\n{}", self.log_tail()),
        );
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `ip route` of the node.
    pub fn routes(&self) -> String {
        self.ns.ip(&["route"])
    }

    /// `ip -6 route` of the node.
    pub fn routes6(&self) -> String {
        self.ns.ip(&["-6", "route"])
    }

    /// Waits until `pred(ip -6 route)` holds.
    pub fn wait_routes6(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Duration {
        self.wait_table(what, timeout, Self::routes6, pred)
    }

    /// Waits until `pred(ip route)` holds.
    pub fn wait_routes(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Duration {
        self.wait_table(what, timeout, Self::routes, pred)
    }

    fn wait_table(
        &self,
        what: &str,
        timeout: Duration,
        read: fn(&Self) -> String,
        pred: impl Fn(&str) -> bool,
    ) -> Duration {
        let start = Instant::now();
        wait(&format!("{}: {what}", self.name), timeout).every(Duration::from_millis(20)).until_ok(|| {
            let r = read(self);
            if pred(&r) { Ok(()) } else { Err(format!("routes:\n{r}\nagent log:\n{}", self.log_tail())) }
        });
        start.elapsed()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent("-KILL");
    }
}

/// A pod: its namespace and address.
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    /// The pod's first address (IPv4 where the pod has one).
    pub ip: String,
    /// The pod's IPv6 address, on a dual-stack network.
    pub ip6: Option<String>,
}

/// Underlay layout.
#[derive(Clone, Copy)]
pub enum Underlay {
    /// One subnet, 192.168.50.0/24.
    Flat,
    /// Nodes alternate between 192.168.50.0/24 and 192.168.51.0/24, routed by the underlay namespace.
    TwoSubnets,
}

/// The lab: control plane, underlay and nodes.
pub struct Lab {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub ul: Netns,
    pub cp: ControlPlane,
    pub dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Lab {
    /// A failing test shows what every agent logged, not just the node whose check failed: a route
    /// missing on one node is often a message another node never sent.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("---- agent log of {} ----\n{}", n.name, n.log_tail());
            }
        }
    }
}

impl Lab {
    /// Starts the control plane with Tabby's CRDs, the underlay and `n` node namespaces with Node objects
    /// (agents not started yet). `None` when the test is skipped.
    pub async fn new(test: &str, n: usize, underlay: Underlay) -> Option<Lab> {
        if !require_lab(test, &[]) {
            return None;
        }
        let cp = start_or_skip(test, Options::default()).await?;
        let dir = tempfile::Builder::new().prefix("tabby-lab-").tempdir().expect("tempdir");
        let port: u16 = cp.server.rsplit(':').next().and_then(|p| p.parse().ok()).expect("server port");
        cp.kubectl_ok(&["create", "namespace", "tabby-system"]);
        // No controller-manager: the pods' service account is made by hand.
        let _ = cp.kubectl(&["create", "serviceaccount", "default", "-n", "default"]);
        cp.kubectl_ok(&["create", "-f", repo_root().join("crds").to_str().expect("utf-8")]);
        cp.kubectl_ok(&["create", "-f", repo_root().join("crds/optional").to_str().expect("utf-8")]);
        cp.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
        let ul = Netns::new("ul");
        ul.ip(&["link", "add", "br0", "type", "bridge"]);
        ul.ip(&["link", "add", "br1", "type", "bridge"]);
        ul.ip(&["addr", "add", "192.168.50.254/24", "dev", "br0"]);
        ul.ip(&["addr", "add", "192.168.51.254/24", "dev", "br1"]);
        ul.ip(&["addr", "add", "203.0.113.1/32", "dev", "lo"]);
        ul.ip(&["link", "set", "br0", "up"]);
        ul.ip(&["link", "set", "br1", "up"]);
        ul.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut lab = Lab { nodes: Vec::new(), pods: Vec::new(), ul, cp, dir, port };
        for i in 1..=n {
            let subnet = match underlay {
                Underlay::Flat => 50,
                Underlay::TwoSubnets => 50 + ((i + 1) % 2),
            };
            lab.add_node(&format!("node{i}"), subnet, i as u8);
        }
        Some(lab)
    }

    /// Plugs `ns` into the underlay: its `eth0` on 192.168.50.0/24 (bridge br0) or 192.168.51.0/24 (br1),
    /// whichever `addr` is in, with `addr`/24.
    pub fn plug(&self, ns: &Netns, addr: &str) {
        let peer: String = format!("v{}{}", next_seq(), ns.name).chars().take(15).collect();
        let link = ["ip", "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name", &peer];
        sh(&[&link[..], &["netns", &self.ul.name]].concat());
        let br = if addr.starts_with("192.168.51.") { "br1" } else { "br0" };
        self.ul.ip(&["link", "set", &peer, "master", br, "up"]);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }

    fn add_node(&mut self, name: &str, subnet: usize, host: u8) {
        let ns = Netns::new(name);
        let addr = format!("192.168.{subnet}.{host}");
        self.plug(&ns, &addr);
        ns.ip(&["route", "add", "default", "via", &format!("192.168.{subnet}.254")]);
        ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        self.apply(&format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n"));
        let fwd = Forwarder::start(&ns, self.port);
        self.nodes.push(Node {
            name: name.into(),
            ns,
            addr,
            dir,
            agent: None,
            env: Vec::new(),
            kubeconfig: self.cp.kubeconfig.clone(),
            _fwd: fwd,
        });
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).expect("node")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).expect("node")
    }

    pub fn apply(&self, yaml: &str) {
        let path = self.dir.path().join(format!("{}.yaml", unique("obj")));
        std::fs::write(&path, yaml).expect("write yaml");
        self.cp.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    }

    /// Creates (or relabels) namespace `name` with `labels`, and its `default` service account (the lab
    /// runs no controller-manager).
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: '{name}', labels: {{{}}}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: '{name}'}}\n",
            labels.join(", ")
        ));
    }

    /// Makes the node network dual-stack: each node's eth0 gets `fd50::<n>/64` next to its IPv4
    /// address, and forwards IPv6 (as kubeadm requires of dual-stack nodes).
    pub fn ipv6(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            n.ns.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
            n.ns.ip(&["-6", "addr", "add", &format!("fd50::{}/64", i + 1), "dev", "eth0", "nodad"]);
        }
    }

    /// An IPv6 pool (blocks of /122, Calico's IPv6 default) next to the IPv4 one.
    pub fn pool_v6(&self, cidr: &str, vxlan: &str) {
        self.apply(&format!(
            "apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {{name: pool-v6}}\nspec: {{cidr: '{cidr}', blockSize: 122, vxlanMode: {vxlan}}}\n"
        ));
    }

    pub fn pool(&self, cidr: &str, vxlan: &str, nat: bool) {
        self.apply(&format!(
            "apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {{name: pool}}\nspec: {{cidr: '{cidr}', blockSize: 26, vxlanMode: {vxlan}, natOutgoing: {nat}}}\n"
        ));
    }

    /// Starts every agent with `env` and waits until each serves the CNI socket.
    pub fn start_agents(&mut self, env: &[(&str, &str)]) {
        for n in &mut self.nodes {
            n.set_env(env);
            n.start_agent();
        }
        for n in &self.nodes {
            n.wait_ready();
        }
    }

    /// Creates a pod on `node` through the real plugin, as a container runtime does.
    pub fn add_pod(&mut self, node: &str, name: &str) -> usize {
        self.add_pod_in(node, "default", name, &[], &[])
    }

    /// Creates pod `namespace/name` on `node` with `labels` and named container ports
    /// (`(name, port, protocol)`), through the real plugin. Pod names are unique across namespaces here
    /// (the lab finds pods by name).
    pub fn add_pod_in(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        ports: &[(&str, u16, &str)],
    ) -> usize {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
        let ports: Vec<String> =
            ports.iter().map(|(n, p, proto)| format!("{{name: {n}, containerPort: {p}, protocol: {proto}}}")).collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: '{name}', namespace: '{namespace}', labels: {{{}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: pause, ports: [{}]}}]\n",
            labels.join(", "),
            ports.join(", ")
        ));
        let pod_ns = Netns::new(name);
        let ips = match cni_add_ns(self.node(node), &pod_ns.path, namespace, name) {
            Ok(ips) => ips,
            Err((_, out)) => panic!("CNI ADD {name} on {node}: {out}"),
        };
        let ip6 = ips.iter().find(|ip| ip.contains(':')).cloned();
        self.pods.push(Pod { name: name.into(), ns: pod_ns, ip: ips[0].clone(), ip6 });
        self.pods.len() - 1
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).expect("pod")
    }

    /// The CIDRs of the blocks `node` owns, from the API.
    pub fn blocks_of(&self, node: &str) -> Vec<String> {
        let out = self.cp.kubectl_ok(&[
            "get",
            "ipamblocks",
            "-o",
            "jsonpath={range .items[*]}{.spec.cidr}={.spec.affinity}{\"\\n\"}{end}",
        ]);
        out.lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(_, a)| *a == format!("host:{node}"))
            .map(|(c, _)| c.to_string())
            .collect()
    }

    /// Waits until NodeStatus/<node> is Ready=True.
    pub fn wait_node_status_ready(&self, node: &str, timeout: Duration) {
        self.wait_for(node, "NodeStatus Ready", timeout, || {
            let out = self.cp.kubectl(&[
                "get",
                "nodestatus",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            String::from_utf8_lossy(&out.stdout).trim() == "True"
        });
    }

    /// Waits until `pred` holds; past `timeout`, fails with `what`, the node's NodeStatus and agent log.
    pub fn wait_for(&self, node: &str, what: &str, timeout: Duration, pred: impl Fn() -> bool) {
        let diagnose = || {
            let st = self.cp.kubectl(&["get", "nodestatus", node, "-o", "yaml"]);
            format!("NodeStatus:\n{}\nagent log:\n{}", String::from_utf8_lossy(&st.stdout), self.node(node).log_tail())
        };
        wait(&format!("{node}: {what}"), timeout).every(Duration::from_millis(200)).until(pred, diagnose);
    }
}

/// Pings `to` from pod namespace `from`; returns whether every reply came back.
/// The address a CNI ADD granted, or its error code and output.
pub type AddOutcome = Result<String, (u64, String)>;

/// CNI ADD of pod `name` (namespace default, netns `pod_ns`) on `node`, as the runtime on that node runs it.
pub fn cni_add(node: &Node, pod_ns: &str, name: &str) -> AddOutcome {
    cni_add_all(node, pod_ns, name).map(|ips| ips[0].clone())
}

/// [`cni_add`] with every address the ADD granted, in the order of the result.
pub fn cni_add_all(node: &Node, pod_ns: &str, name: &str) -> Result<Vec<String>, (u64, String)> {
    cni_add_ns(node, pod_ns, "default", name)
}

/// [`cni_add_all`] of a pod in `namespace`.
pub fn cni_add_ns(node: &Node, pod_ns: &str, namespace: &str, name: &str) -> Result<Vec<String>, (u64, String)> {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "tabby",
        "log_file_path": node.dir.join("cni.log"),
        "log_level": "debug",
        "agent_socket": node.socket(),
        "agent_timeout_seconds": 30,
    });
    let cid = format!("cid-{name}");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(plugin_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &cid)
        .env("CNI_NETNS", pod_ns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={cid}"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin starts");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("stdin");
    let out = child.wait_with_output().expect("plugin runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let ips: Vec<String> = v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str().and_then(|a| a.split('/').next()).map(str::to_string))
        .collect();
    if out.status.success() && !ips.is_empty() {
        Ok(ips)
    } else {
        Err((v["code"].as_u64().unwrap_or(0), format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))))
    }
}

pub fn ping(from: &Netns, to: &str, count: u32) -> bool {
    from.exec(&["ping", "-c", &count.to_string(), "-W", "1", "-i", "0.2", "-q", to]).status.success()
}

/// Connects from `client` to a TCP server in `server` at `ip`; returns the source address the server saw.
pub fn seen_source(server: &Netns, client: &Netns, ip: &str, port: u16) -> IpAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let spath = server.path.clone();
    let v6 = ip.contains(':');
    let t = std::thread::spawn(move || {
        netns::enter(&spath).expect("setns");
        let any: IpAddr = if v6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
        let l = TcpListener::bind((any, port)).expect("bind server");
        let _ = tx.send(());
        let (_s, peer) = l.accept().expect("accept");
        peer.ip()
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    let target: IpAddr = ip.parse().expect("ip");
    client.run(move || {
        let s = TcpStream::connect_timeout(&(target, port).into(), Duration::from_secs(5)).expect("connect");
        drop(s);
    });
    t.join().expect("server thread")
}

/// The addresses of `traceroute -n` hops from `from` to `to`.
pub fn traceroute(from: &Netns, to: &str) -> Vec<String> {
    let out = from.ok(&["traceroute", "-n", "-q", "1", "-w", "1", "-m", "6", to]);
    out.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1).map(str::to_string)).collect()
}
