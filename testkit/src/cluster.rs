//! A control plane with Tabby's CRDs and `tabby-agent` processes serving the CNI socket, and the `tabby`
//! plugin run as a container runtime runs it (optionally inside a "node" network namespace, so every
//! address, route and link a test makes lives in namespaces it owns). For the IPAM and plugin suites.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use tabby_api::ipam::{IPAMBlock, IPAMHandle, block};
use tabby_wire::proto::{self, Op, Response};

use crate::netns::Netns;
use crate::process::{agent_bin, plugin_bin, unique};
use crate::{ControlPlane, Options, repo_root, start_or_skip};

/// Tests that start control planes and agents run one at a time (a small machine; shared ports).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the suite's lock for the caller's whole test (async tests).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A control plane with Tabby's CRDs, the tabby-system namespace and nodes.
pub struct Cluster {
    pub cp: ControlPlane,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(test: &str) -> Option<Cluster> {
        Self::start_with(test, true).await
    }

    pub async fn start_with(test: &str, crds: bool) -> Option<Cluster> {
        let cp = start_or_skip(test, Options::default()).await?;
        let dir = tempfile::Builder::new().prefix("tabby-cni-test-").tempdir().expect("tempdir");
        let c = Cluster { cp, dir };
        c.cp.kubectl_ok(&["create", "namespace", "tabby-system"]);
        if crds {
            c.install_crds();
        }
        Some(c)
    }

    pub fn install_crds(&self) {
        self.cp.kubectl_ok(&["create", "-f", repo_root().join("crds").to_str().expect("utf-8 path")]);
        self.cp.kubectl_ok(&["create", "-f", repo_root().join("crds/optional").to_str().expect("utf-8 path")]);
        self.cp.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
    }

    pub fn client(&self) -> Client {
        self.cp.client()
    }

    pub fn apply(&self, yaml: &str) {
        let path = self.dir.path().join(format!("{}.yaml", unique("obj")));
        std::fs::write(&path, yaml).expect("write yaml");
        self.cp.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    }

    pub fn pool(&self, name: &str, cidr: &str, block_size: u8) {
        self.apply(&format!(
            "apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {{name: {name}}}\nspec: {{cidr: '{cidr}', blockSize: {block_size}}}\n"
        ));
    }

    pub fn node(&self, name: &str) {
        self.apply(&format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n"));
    }

    /// A pod bound to `node` (its namespace and the namespace's default service account must exist).
    pub fn pod(&self, ns: &str, name: &str, node: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: pause}}]\n"
        ));
    }

    /// Every block.
    pub async fn blocks(&self) -> Vec<IPAMBlock> {
        Api::<IPAMBlock>::all(self.client()).list(&ListParams::default()).await.expect("list blocks").items
    }

    pub async fn handles(&self) -> Vec<IPAMHandle> {
        Api::<IPAMHandle>::all(self.client()).list(&ListParams::default()).await.expect("list handles").items
    }

    /// handle → addresses over every block, asserting each block is consistent.
    pub async fn allocations(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for b in self.blocks().await {
            block::check_consistency(&b.spec).unwrap_or_else(|e| panic!("{e}"));
            let cidr: IpNet = b.spec.cidr.parse().expect("cidr");
            for ord in 0..b.spec.allocations.len() {
                if let Some(h) = block::handle_at(&b.spec, ord) {
                    out.entry(h.to_string()).or_default().push(block::addr_at(&cidr, ord).to_string());
                }
            }
        }
        out
    }
}

/// A running `tabby-agent` process.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub node: String,
    env: Vec<(String, String)>,
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Agent {
    /// Starts an agent for `node` (socket and state in the cluster's temp dir) without waiting.
    pub fn spawn(c: &Cluster, node: &str, extra: &[(&str, &str)]) -> Agent {
        let dir = c.dir.path().join(format!("agent-{node}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let mut a = Agent {
            child: Command::new("true").spawn().expect("true runs"),
            socket: dir.join("agent.sock"),
            log: dir.join("agent.log"),
            node: node.into(),
            env: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            kubeconfig: c.cp.kubeconfig.clone(),
            dir,
        };
        let _ = a.child.wait();
        a.launch();
        a
    }

    fn launch(&mut self) {
        let env: Vec<(String, String)> = [("TABBY_MTU", "1450"), ("RUST_LOG", "tabby_agent=debug,warn")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(self.env.iter().cloned())
            .collect();
        self.child = spawn_agent(None, &self.kubeconfig, &self.node, &self.dir, &env);
    }

    /// Starts an agent and waits until it reports ready.
    pub fn start(c: &Cluster, node: &str, extra: &[(&str, &str)]) -> Agent {
        let a = Agent::spawn(c, node, extra);
        a.wait_ready();
        a
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.call(Op::Status).is_ok_and(|r| r.ready) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent {} not ready in 60s; log:\n{}", self.node, self.log_tail());
    }

    pub fn call(&self, op: Op) -> Result<Response, proto::ClientError> {
        proto::call(&self.socket, op, Duration::from_secs(30))
    }

    /// ADD through the socket (no netns), for IPAM-only tests.
    pub fn add(&self, handle: &str) -> Result<Response, proto::ClientError> {
        self.call(Op::Add {
            handle: handle.into(),
            container_id: handle.into(),
            ifname: "eth0".into(),
            namespace: None,
            pod: None,
        })
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
        self.wait_ready();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `tabby-agent run` for `node` (inside `ns` when given, through `ip netns exec` so that `/sys`
/// shows that namespace): its socket `agent.sock`, state and log `agent.log` (appended) in `dir`, health on
/// a free port, debug logging; `env` comes last and overrides.
pub fn spawn_agent(ns: Option<&Netns>, kubeconfig: &Path, node: &str, dir: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).expect("agent log");
    let bin = agent_bin();
    let mut cmd = match ns {
        Some(ns) => ns.command(bin.to_str().expect("a UTF-8 path")),
        None => Command::new(bin),
    };
    cmd.arg("run")
        .env("KUBECONFIG", kubeconfig)
        .env("NODENAME", node)
        .env("TABBY_AGENT_SOCKET", dir.join("agent.sock"))
        .env("TABBY_STATE_DIR", dir.join("state"))
        .env("TABBY_HEALTH_PORT", "0")
        .env("TABBY_LOG_SEVERITY", "debug")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("tabby-agent starts")
}

/// The plugin's network configuration.
pub fn conf(version: &str, socket: &Path, log: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "tabby",
        "log_file_path": log,
        "log_level": "debug",
        "agent_socket": socket,
        "agent_timeout_seconds": 10,
    })
}

/// One plugin run as a runtime does it.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub json: Value,
}

/// Builder for a plugin invocation.
#[derive(Clone, Default)]
pub struct Cni {
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    /// Runs the plugin inside this namespace (the "host" side).
    pub host_ns: Option<String>,
    pub bin: Option<PathBuf>,
}

impl Cni {
    pub fn new(command: &str, conf: &Value, cid: &str, netns: &str, ifname: &str) -> Cni {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".into(), command.into());
        env.insert("CNI_CONTAINERID".into(), cid.into());
        env.insert("CNI_NETNS".into(), netns.into());
        env.insert("CNI_IFNAME".into(), ifname.into());
        env.insert("CNI_PATH".into(), "/usr/lib/cni:/opt/cni/bin".into());
        Cni { env, stdin: conf.to_string().into_bytes(), host_ns: None, bin: None }
    }

    pub fn pod(mut self, ns: &str, name: &str, cid: &str) -> Cni {
        self.env.insert(
            "CNI_ARGS".into(),
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={cid}"),
        );
        self
    }

    pub fn in_ns(mut self, ns: &Netns) -> Cni {
        self.host_ns = Some(ns.path.clone());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.bin.clone().unwrap_or_else(plugin_bin));
        cmd.env_clear().envs(&self.env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(path) = &self.host_ns {
            crate::netns::spawn_inside(path, &mut cmd);
        }
        cmd
    }

    pub fn run(&self) -> Run {
        let mut child = self.command().spawn().expect("plugin starts");
        child.stdin.take().expect("stdin").write_all(&self.stdin).expect("write stdin");
        let out = child.wait_with_output().expect("plugin runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
        }
    }
}

/// The pod addresses (without prefix) of an ADD result.
pub fn result_ips(v: &Value) -> Vec<String> {
    v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str())
                .map(|s| s.split('/').next().unwrap_or(s).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts no two handles share an address and returns the set of addresses.
pub fn distinct(allocs: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (h, ips) in allocs {
        for ip in ips {
            assert!(seen.insert(ip.clone()), "address {ip} of {h} is allocated twice: {allocs:?}");
        }
    }
    seen
}
