//! `make e2e`: the getting-started guide, verbatim, on a fresh lab of real nodes (kubelet, containerd and
//! kube-proxy per node; Tabby from its image). Needs root.
//!
//! The guide's commands run as a user types them: through a shell, with `kubectl` and `kubectl-tabby` on the
//! PATH and the lab's kubeconfig; only the names differ where the guide names Calico (`tigera-operator` →
//! `tabby-operator`, `calico-system` → `tabby-system`, `calicoctl` → `kubectl tabby`). Around the guide, the
//! test checks what the guide only shows: pods spread by the scheduler across nodes, Services through
//! kube-proxy and CoreDNS, hostPort through portmap, the CNI 1.1 configuration with STATUS reported to the
//! kubelet, the switch to VXLAN, the uninstall, and that `make lab-down` leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tabby_e2e::lab::daemon::{self, LabConfig};
use tabby_e2e::lab::node::LabNode;
use tabby_e2e::repo_root;
use tabby_testkit::poll::wait;
use tabby_testkit::skip::require_root;

struct Lab {
    cfg: LabConfig,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = daemon::down(&self.cfg.state) {
            eprintln!("lab down: {e}");
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

impl Lab {
    /// A command line as a user types it (bash, in the repository, with the lab's kubectl and kubectl-tabby).
    fn try_run(&self, line: &str) -> Output {
        let path = format!("{}:{}", self.cfg.state.display(), std::env::var("PATH").unwrap_or_default());
        Command::new("bash")
            .args(["-c", line])
            .current_dir(repo_root())
            .env("KUBECONFIG", self.cfg.state.join("kubeconfig"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .output()
            .expect("bash runs")
    }

    /// Runs a line of the guide, prints it and its output, and fails the test when it fails.
    fn run(&self, line: &str) -> String {
        println!("$ {line}");
        let out = self.try_run(line);
        let shown = text(&out);
        println!("{}", shown.trim_end());
        assert!(out.status.success(), "`{line}` failed ({}):\n{shown}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a line until it succeeds (a `kubectl wait` typed before the object exists fails at once).
    fn run_until_ok(&self, line: &str, timeout: Duration) -> String {
        println!("$ {line}");
        let out = eventually(&format!("`{line}` succeeds"), timeout, || {
            let out = self.try_run(line);
            out.status.success().then_some(out)
        });
        println!("{}", text(&out).trim_end());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &str) -> Value {
        let out = self.try_run(&format!("kubectl {args} -o json"));
        assert!(out.status.success(), "kubectl {args}: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("kubectl prints JSON")
    }

    fn node(&self, index: usize) -> LabNode {
        LabNode::new(&self.cfg.state, index)
    }

    /// `sh -c command` on a lab node (`make lab-node`).
    fn on_node(&self, index: usize, command: &str) -> String {
        let out = self.node(index).shell(command).output().expect("the node shell runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pod_field(&self, ns: &str, pod: &str, path: &str) -> String {
        self.run(&format!("kubectl get pod -n {ns} {pod} -o jsonpath='{{{path}}}'"))
    }
}

/// Polls `check` (every 500 ms) until it gives a value.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    wait(what, timeout).every(Duration::from_millis(500)).until_ok(|| check().ok_or_else(|| "not yet".to_string()))
}

fn condition(obj: &Value, kind: &str) -> Option<String> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)?["status"].as_str().map(String::from)
}

/// What the lab leaves on this machine: namespaces, links, mounts, cgroups, processes of the node software.
fn snapshot(node_bin: &Path) -> Vec<(String, Vec<String>)> {
    let lines = |program: &str, args: &[&str]| -> Vec<String> {
        let out = Command::new(program).args(args).output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().nth(4).unwrap_or("").to_string())
        .collect();
    let cgroups: Vec<String> = tabby_e2e::lab::cgroups::hierarchies(true)
        .iter()
        .filter(|h| h.join(tabby_e2e::lab::cgroups::lab_root().trim_start_matches('/')).exists())
        .map(|h| h.display().to_string())
        .collect();
    // Node software and control-plane processes outside this machine's network namespace: the lab's (tests
    // running beside this one start control planes too, on this machine's loopback).
    let cp_bin = tabby_e2e::binary();
    let own_netns = std::fs::read_link("/proc/self/ns/net").ok();
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe"))
            && (exe.starts_with(node_bin) || exe == cp_bin)
            && std::fs::read_link(entry.path().join("ns/net")).ok() != own_netns
        {
            processes.push(format!("{} {}", entry.file_name().to_string_lossy(), exe.display()));
        }
    }
    // The mount points the lab makes on this machine for the nodes' directories.
    let files: Vec<String> =
        tabby_e2e::lab::node::NODE_DIRS.iter().filter(|d| Path::new(d).exists()).map(|d| d.to_string()).collect();
    let mut all = vec![
        ("files", files),
        ("netns", lines("ip", &["netns", "list"])),
        ("links", lines("ip", &["-o", "link", "show"])),
        ("mounts", mounts),
        ("cgroups", cgroups),
        ("processes", processes),
    ];
    for (_, v) in &mut all {
        v.sort();
    }
    all.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn env_dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(default))
}

const POD_YAML: &str = r#"kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: NAME
  namespace: calico-test
spec:
  containers:
  - name: netshoot
    image: nicolaka/netshoot
    command: ["sleep", "infinity"]
EOF"#;

#[test]
fn getting_started_guide() {
    if !require_root("getting_started_guide") {
        return;
    }
    let bin_dir = env_dir("TABBY_BIN_DIR", "target/e2e-bin");
    let images = env_dir("TABBY_IMAGES", "target/e2e-images");
    let node_bin = env_dir("TABBY_NODE_BIN", ".cache/node/bin");
    assert!(bin_dir.join("kubectl-tabby").exists(), "kubectl-tabby is not built in {}", bin_dir.display());
    assert!(images.join("images.json").exists(), "no images in {} (make e2e-images)", images.display());

    let before = snapshot(&node_bin);
    let state = std::env::temp_dir().join(format!("tabby-lab-e2e-{}", std::process::id()));
    let lab = Lab { cfg: LabConfig { bin_dir, images, node_bin: node_bin.clone(), ..LabConfig::new(state.clone()) } };
    let start = Instant::now();
    daemon::start_cluster(&lab.cfg, Path::new(env!("CARGO_BIN_EXE_tabby-lab")), start).expect("the lab's cluster");
    println!("cluster up in {:.1}s", start.elapsed().as_secs_f64());

    // ---- Day 8-10: install and verify.
    lab.run("kubectl create -f operator.yaml");
    lab.run_until_ok(
        "kubectl wait --for=condition=Ready pod -l name=tabby-operator -n tabby-operator --timeout=300s",
        Duration::from_secs(300),
    );
    lab.run("kubectl create -f custom-resources.yaml");
    lab.run_until_ok(
        "kubectl wait --for=condition=Available tabbystatus/network --timeout=300s",
        Duration::from_secs(300),
    );
    println!("Tabby Available {:.1}s after the cluster start", start.elapsed().as_secs_f64());
    let pods = lab.run("kubectl get pods -n tabby-system -o wide");
    assert_eq!(pods.lines().filter(|l| l.contains("tabby-node-") && l.contains("Running")).count(), 3, "{pods}");
    let nodes = lab.run("kubectl get nodes -o wide");
    assert_eq!(nodes.lines().filter(|l| l.contains(" Ready ")).count(), 3, "every node Ready: {nodes}");
    for node in lab.json("get nodes")["items"].as_array().expect("nodes") {
        assert_eq!(condition(node, "NetworkUnavailable").as_deref(), Some("False"), "{}", node["metadata"]["name"]);
    }
    let operator_log = lab.run("kubectl logs -n tabby-operator deployment/tabby-operator");
    assert!(operator_log.contains("\"message\":\"applied\""), "the operator's JSON log: {operator_log}");
    let agent_log = lab.run("kubectl logs -n tabby-system -l k8s-app=tabby-node");
    assert!(agent_log.contains("tabby_agent"), "the agents' JSON logs: {agent_log}");

    // ---- Day 13-14: two pods, placed by the scheduler (no nodeName). Pods without requests count as
    // 100m of CPU in the scheduler's scoring, so the second goes to another node than the first.
    lab.run("kubectl create namespace calico-test");
    for pod in ["pod-a", "pod-b"] {
        lab.run_until_ok(&POD_YAML.replace("NAME", pod), Duration::from_secs(30));
    }
    lab.run("kubectl wait --for=condition=Ready pod/pod-a pod/pod-b -n calico-test --timeout=120s");
    lab.run("kubectl get pods -n calico-test -o wide");
    let node_a = lab.pod_field("calico-test", "pod-a", ".spec.nodeName");
    let node_b = lab.pod_field("calico-test", "pod-b", ".spec.nodeName");
    assert_ne!(node_a, node_b, "the scheduler put both pods on one node");
    let ip_a = lab.pod_field("calico-test", "pod-a", ".status.podIP");
    let ip_b = lab.pod_field("calico-test", "pod-b", ".status.podIP");
    assert!(ip_a.starts_with("192.168.") && ip_b.starts_with("192.168."), "default pool: {ip_a} {ip_b}");
    let addr =
        |node: &str| format!("192.168.100.{}", 100 + node.trim_start_matches("node-").parse::<u8>().expect("node-N"));

    let ping = lab.run(&format!("kubectl exec -n calico-test pod-a -- ping -c 3 {ip_b}"));
    assert!(ping.contains("3 received"), "{ping}");
    let trace = lab.run(&format!("kubectl exec -n calico-test pod-a -- traceroute {ip_b}"));
    assert!(
        trace.contains(&addr(&node_a)) && trace.contains(&addr(&node_b)) && trace.lines().count() == 4,
        "direct routing through the two nodes, no NAT hop: {trace}"
    );
    let routes = lab.run("kubectl exec -n calico-test pod-a -- ip route show");
    assert!(routes.contains("default via 169.254.1.1 dev eth0") && routes.contains("169.254.1.1 dev eth0 scope link"));
    let addrs = lab.run("kubectl exec -n calico-test pod-a -- ip addr show");
    assert!(addrs.contains(&format!("inet {ip_a}/32")), "{addrs}");
    source_address_check(&lab, "pod-a", &ip_a, "pod-b", &ip_b);

    // ---- Day 1-2: a pod from `kubectl run` (a lab image standing in for nginx), what listens where.
    lab.run("kubectl run test-pod --image=registry.k8s.io/e2e-test-images/agnhost:2.66.1 -- netexec --http-port=80");
    lab.run("kubectl wait --for=condition=Ready pod/test-pod --timeout=120s");
    let ip_t = lab.pod_field("default", "test-pod", ".status.podIP");
    let listening = lab.run("kubectl exec test-pod -- ss -tln");
    assert!(listening.contains("*:80 ") || listening.contains("0.0.0.0:80 "), "{listening}");
    let netstat = lab.run("kubectl exec -n calico-test pod-a -- netstat -tlnp");
    assert!(netstat.contains("Active Internet connections (only servers)"), "{netstat}");
    let hostname = lab.run(&format!("kubectl exec -n calico-test pod-a -- curl -s http://{ip_t}/hostname"));
    assert_eq!(hostname.trim(), "test-pod");

    // ---- Day 11-12: the CLI, as calicoctl users know it.
    let status = eventually("mesh Established", Duration::from_secs(60), || {
        let s = lab.run("kubectl tabby node status node-0");
        (s.matches("Established").count() >= 2).then_some(s)
    });
    assert!(status.contains("node-to-node mesh"), "{status}");
    let pools = lab.run("kubectl tabby get ippool -o wide");
    assert!(pools.contains("default-ipv4-ippool") && pools.contains("192.168.0.0/16"), "{pools}");
    let weps = lab.run("kubectl tabby get workloadendpoint -n calico-test");
    assert!(weps.contains("pod-a") && weps.contains(&node_a) && weps.contains(&ip_a) && weps.contains("tby"), "{weps}");
    assert!(weps.contains("pod-b") && weps.contains(&node_b) && weps.contains(&ip_b), "{weps}");
    let bgp = lab.run("kubectl tabby get bgpconfig default -o yaml");
    assert!(bgp.contains("asNumber: 64512"), "{bgp}");
    let ipam = lab.run("kubectl tabby ipam show");
    assert!(ipam.contains("192.168.0.0/16"), "{ipam}");
    let check = lab.run("kubectl tabby ipam check");
    assert!(check.contains("found 0 problems"), "{check}");

    // Routes on pod-a's node: proto tabby to the other nodes' blocks via their addresses, dev tby… to its pods.
    let index_a: usize = node_a.trim_start_matches("node-").parse().expect("node-N");
    let node_routes = lab.on_node(index_a, "ip route");
    assert!(
        node_routes.lines().any(|l| l.contains("proto tabby") && l.contains(&format!("via {}", addr(&node_b)))),
        "{node_routes}"
    );
    assert!(node_routes.lines().any(|l| l.starts_with(&ip_a) && l.contains("dev tby")), "{node_routes}");

    services(&lab, &ip_a);
    host_port_and_streams(&lab);
    cni_status(&lab);

    // ---- Switch the pool to VXLAN by editing the Installation: the DaemonSet rolls, traffic recovers.
    lab.run(
        r#"kubectl patch installation default --type=json -p '[{"op":"replace","path":"/spec/network/ipPools/0/encapsulation","value":"VXLAN"}]'"#,
    );
    eventually("pool in VXLAN mode", Duration::from_secs(60), || {
        (lab.json("get ippool default-ipv4-ippool")["spec"]["vxlanMode"] == "Always").then_some(())
    });
    lab.run_until_ok(
        "kubectl wait --for=condition=Available tabbystatus/network --timeout=180s",
        Duration::from_secs(240),
    );
    eventually("pod-a pings pod-b over VXLAN", Duration::from_secs(60), || {
        lab.try_run(&format!("kubectl exec -n calico-test pod-a -- ping -c 3 -W 2 {ip_b}"))
            .status
            .success()
            .then_some(())
    });
    source_address_check(&lab, "pod-a", &ip_a, "pod-b", &ip_b);
    assert!(lab.on_node(0, "ip -d link show vxlan.tabby").contains("vxlan id 4096"), "the VXLAN device");

    // ---- Uninstall: teardown completes and the nodes hold nothing of Tabby.
    lab.run("kubectl delete namespace calico-test --wait=true --timeout=120s");
    lab.run("kubectl delete pod test-pod --wait=true --timeout=60s");
    lab.run("kubectl delete installation default --timeout=180s");
    for node in 0..3 {
        let routes = lab.on_node(node, "ip route");
        assert!(!routes.contains("proto tabby") && !routes.contains("blackhole"), "node-{node} routes: {routes}");
        let links = lab.on_node(node, "ip -o link");
        assert!(!links.contains("tby") && !links.contains("vxlan.tabby"), "node-{node} links: {links}");
        let nft = lab.on_node(node, "nft list tables");
        assert!(!nft.contains("tabby"), "node-{node} nftables: {nft}");
        let cni = lab.on_node(node, "ls /etc/cni/net.d /opt/cni/bin");
        assert!(
            !cni.contains("10-tabby.conflist") && !cni.lines().any(|l| l == "tabby"),
            "node-{node} CNI files: {cni}"
        );
    }

    // ---- make lab-down leaves nothing: no namespace, link, mount, cgroup or node process that is new.
    drop(lab);
    let after = snapshot(&node_bin);
    for ((what, b), (_, a)) in before.iter().zip(&after) {
        let left: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
        let ours: Vec<&&String> = left
            .iter()
            .filter(|l| {
                [
                    "tabby-node-",
                    "tlab",
                    "tabbylab",
                    "tabby-lab",
                    "/etc/cni",
                    "/opt/cni",
                    "/var/lib/",
                    "/etc/kubernetes",
                    "/run/",
                ]
                .iter()
                .any(|p| l.contains(p))
                    || what == "processes"
                    || what == "cgroups"
                    || what == "files"
            })
            .collect();
        assert!(ours.is_empty(), "make lab-down left {what}: {ours:?}");
    }
    assert!(!state.exists(), "the lab's state directory is removed");
}

/// A TCP server in `server` sees `client`'s own address: no NAT between pods.
fn source_address_check(lab: &Lab, client: &str, client_ip: &str, server: &str, server_ip: &str) {
    let path = format!("{}:{}", lab.cfg.state.display(), std::env::var("PATH").unwrap_or_default());
    let listener = Command::new("bash")
        .args(["-c", &format!("kubectl exec -n calico-test {server} -- timeout 30 nc -lvn 8080")])
        .env("KUBECONFIG", lab.cfg.state.join("kubeconfig"))
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec runs");
    eventually("the client connects", Duration::from_secs(20), || {
        lab.try_run(&format!(
            "kubectl exec -n calico-test {client} -- sh -c 'echo hello | nc -w 2 -N {server_ip} 8080'"
        ))
        .status
        .success()
        .then_some(())
    });
    let out = listener.wait_with_output().expect("the listener ends");
    let seen = text(&out);
    assert!(seen.contains(&format!("Connection received on {client_ip} ")), "the server sees {client_ip}: {seen}");
}

/// ClusterIP, headless and NodePort Services in front of two pods on different nodes, by name through CoreDNS.
fn services(lab: &Lab, _client_ip: &str) {
    for (pod, node) in [("web-0", "node-1"), ("web-1", "node-2")] {
        lab.run(&format!(
            r#"kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: calico-test, labels: {{app: web}}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: registry.k8s.io/e2e-test-images/agnhost:2.66.1
    args: ["netexec", "--http-port=8080"]
    ports: [{{containerPort: 8080, name: http}}]
    readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
EOF"#
        ));
    }
    lab.run(
        r#"kubectl apply -f - <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: calico-test}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless, namespace: calico-test}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-nodeport, namespace: calico-test}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
EOF"#,
    );
    lab.run("kubectl wait --for=condition=Ready pod/web-0 pod/web-1 -n calico-test --timeout=120s");
    let backends = ["web-0", "web-1"].map(|p| lab.pod_field("calico-test", p, ".status.podIP"));
    // By name through CoreDNS, to the ClusterIP, through kube-proxy, to both backends on their nodes.
    let mut seen = std::collections::BTreeSet::new();
    eventually("both backends answer through the ClusterIP Service", Duration::from_secs(60), || {
        let out = lab.try_run("kubectl exec -n calico-test pod-a -- curl -s --max-time 2 http://web/hostname");
        if out.status.success() {
            seen.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        (seen.len() == 2).then_some(())
    });
    let lookup = lab.run("kubectl exec -n calico-test pod-a -- nslookup web-headless.calico-test.svc.cluster.local");
    for ip in &backends {
        assert!(lookup.contains(ip.as_str()), "the headless Service names every backend ({ip}): {lookup}");
    }
    let full = lab.run("kubectl exec -n calico-test pod-a -- nslookup web.calico-test.svc.cluster.local");
    let cluster_ip = lab.run("kubectl get service -n calico-test web -o jsonpath='{.spec.clusterIP}'");
    assert!(full.contains(cluster_ip.trim()), "{full}");
    // NodePort on every node's address, from this machine (outside the cluster).
    let port = lab.run("kubectl get service -n calico-test web-nodeport -o jsonpath='{.spec.ports[0].nodePort}'");
    for node in 0..3 {
        let url = format!("http://192.168.100.{}:{}/hostname", 100 + node, port.trim());
        let answer = eventually(&format!("NodePort {url}"), Duration::from_secs(30), || {
            let out = lab.try_run(&format!("curl -s --max-time 2 {url}"));
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        assert!(answer == "web-0" || answer == "web-1", "{url}: {answer}");
    }
}

/// hostPort through the portmap plugin, reached at the node's address; `kubectl port-forward` and
/// `kubectl attach` through the API server and the kubelet.
fn host_port_and_streams(lab: &Lab) {
    // A quoted here-document: the shell script of the talker is the pod's, not expanded here.
    lab.run(
        r#"kubectl apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: hostport, namespace: calico-test}
spec:
  nodeName: node-2
  containers:
  - name: web
    image: registry.k8s.io/e2e-test-images/agnhost:2.66.1
    args: ["netexec", "--http-port=8080"]
    ports: [{containerPort: 8080, hostPort: 18080}]
---
apiVersion: v1
kind: Pod
metadata: {name: talker, namespace: calico-test}
spec:
  containers:
  - name: talker
    image: registry.k8s.io/e2e-test-images/busybox:1.37.0-2
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
EOF"#,
    );
    lab.run("kubectl wait --for=condition=Ready pod/hostport pod/talker -n calico-test --timeout=120s");
    let answer = eventually("hostPort 18080 on node-2", Duration::from_secs(30), || {
        let out = lab.try_run("curl -s --max-time 2 http://192.168.100.102:18080/hostname");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(answer, "hostport");

    let forwarded = lab.run(
        "kubectl port-forward -n calico-test pod/web-0 18081:8080 >/dev/null 2>&1 & pf=$!; \
         for i in $(seq 50); do curl -s --max-time 1 http://127.0.0.1:18081/hostname && break; sleep 0.2; done; kill $pf",
    );
    assert!(forwarded.contains("web-0"), "port-forward: {forwarded}");
    let attached = lab.try_run("timeout 4 kubectl attach -n calico-test talker");
    assert!(text(&attached).contains("tick "), "attach: {}", text(&attached));
    let logs = lab.run("kubectl logs -n calico-test talker --tail=3");
    assert!(logs.contains("tick "), "{logs}");
}

/// With `hostPorts: Disabled` the conflist is CNI 1.1.0: containerd runs pods with it and calls STATUS,
/// which the kubelet reports as the node's NetworkReady — false while the node's agent does not answer,
/// true again after.
fn cni_status(lab: &Lab) {
    lab.run(r#"kubectl patch installation default --type=merge -p '{"spec":{"network":{"hostPorts":"Disabled"}}}'"#);
    eventually("the CNI 1.1.0 conflist on every node", Duration::from_secs(180), || {
        (0..3)
            .all(|n| {
                let conf = lab.on_node(n, "cat /etc/cni/net.d/10-tabby.conflist");
                conf.contains("\"cniVersion\":\"1.1.0\"") || conf.contains("\"cniVersion\": \"1.1.0\"")
            })
            .then_some(())
    });
    lab.run_until_ok(
        "kubectl wait --for=condition=Available tabbystatus/network --timeout=180s",
        Duration::from_secs(240),
    );
    lab.run(&POD_YAML.replace("NAME", "pod-c"));
    lab.run("kubectl wait --for=condition=Ready pod/pod-c -n calico-test --timeout=120s");

    // Stop node-2's agent (SIGSTOP: its socket accepts, nothing answers): STATUS fails, the node turns
    // NotReady with the plugin's message; SIGCONT: Ready again.
    let agent =
        lab.on_node(2, "for p in $(pgrep -x tabby-agent); do grep -q /node-2/ /proc/$p/cgroup && echo $p; done");
    let agent = agent.trim().to_string();
    assert!(!agent.is_empty() && !agent.contains('\n'), "one agent process on node-2: {agent:?}");
    lab.on_node(2, &format!("kill -STOP {agent}"));
    let message = eventually("node-2 NotReady through CNI STATUS", Duration::from_secs(60), || {
        let node = lab.json("get node node-2");
        let ready = node["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        (ready["status"] == "False").then(|| ready["message"].as_str().unwrap_or_default().to_string())
    });
    lab.on_node(2, &format!("kill -CONT {agent}"));
    assert!(message.contains("NetworkReady=false") && message.contains("Tabby agent is not ready"), "{message}");
    eventually("node-2 Ready again", Duration::from_secs(60), || {
        (condition(&lab.json("get node node-2"), "Ready").as_deref() == Some("True")).then_some(())
    });
}
