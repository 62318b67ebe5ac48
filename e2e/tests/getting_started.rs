//! `make e2e`: the getting-started guide as a test, on a fresh lab. Needs root (network namespaces).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tabby_e2e::lab::daemon::{self, LabConfig};
use tabby_e2e::repo_root;

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

impl Lab {
    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.cfg.state.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", self.cfg.state.join("kubeconfig"))
            .output()
            .unwrap()
    }
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&full)).unwrap()
    }
    fn tabby(&self, args: &[&str]) -> String {
        let out = Command::new(self.cfg.bin_dir.join("kubectl-tabby"))
            .args(args)
            .env("KUBECONFIG", self.cfg.state.join("kubeconfig"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl tabby {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn pod_exec(&self, pod: &str, command: &str) -> std::process::Output {
        let uid = self.kubectl_ok(&["get", "pod", "-n", "calico-test", pod, "-o", "jsonpath={.metadata.uid}"]);
        Command::new("ip")
            .args(["netns", "exec", &tabby_e2e::lab::runner::pod_netns(&uid), "sh", "-c", command])
            .output()
            .unwrap()
    }
    fn node_exec(&self, node: usize, command: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("tabby-node-{node}"), "sh", "-c", command])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn snapshot() -> (String, String, String) {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let names = |o: &std::process::Output| {
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        v.sort();
        v.join("\n")
    };
    let mut m: Vec<String> = mounts.lines().map(|l| l.split_whitespace().nth(4).unwrap_or("").to_string()).collect();
    m.sort();
    (names(&netns), names(&links), m.join("\n"))
}

/// Processes running one of the lab's binaries (the lab itself, the operator, agents, the CNI plugin).
fn lab_processes(bin_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe"))
            && exe.starts_with(bin_dir)
            && entry.file_name().to_string_lossy().parse::<u32>().is_ok_and(|pid| pid != std::process::id())
        {
            found.push(format!("{} {}", entry.file_name().to_string_lossy(), exe.display()));
        }
    }
    found
}

fn bin_dir() -> PathBuf {
    std::env::var_os("TABBY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_tabby-lab")).parent().unwrap().to_path_buf())
}

#[test]
fn getting_started_guide() {
    let root_user = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if !root_user {
        assert!(!tabby_e2e::in_ci(), "the lab needs root");
        eprintln!("SKIP getting_started_guide: the lab needs root (network namespaces)");
        return;
    }
    for bin in ["tabby-agent", "tabby", "tabby-operator", "kubectl-tabby"] {
        assert!(bin_dir().join(bin).exists(), "{bin} is not built in {}", bin_dir().display());
    }
    let before = snapshot();
    let state = std::env::temp_dir().join(format!("tabby-lab-e2e-{}", std::process::id()));
    let lab = Lab { cfg: LabConfig { state: state.clone(), nodes: 3, bin_dir: bin_dir() } };
    daemon::up(&lab.cfg, Path::new(env!("CARGO_BIN_EXE_tabby-lab"))).expect("make lab");

    // Every tabby-system pod Running and Ready; every node's network available.
    eventually("tabby-system pods ready", Duration::from_secs(120), || {
        let pods = lab.json(&["get", "pods", "-n", "tabby-system"]);
        let items = pods["items"].as_array()?.clone();
        (items.len() == 3
            && items.iter().all(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            }))
        .then_some(())
    });
    eventually("NetworkUnavailable=False on every node", Duration::from_secs(120), || {
        let nodes = lab.json(&["get", "nodes"]);
        nodes["items"]
            .as_array()?
            .iter()
            .all(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False"))
            })
            .then_some(())
    });

    // The guide: two pods on different nodes.
    lab.kubectl_ok(&["create", "namespace", "calico-test"]);
    eventually("default service account", Duration::from_secs(30), || {
        lab.kubectl(&["get", "sa", "default", "-n", "calico-test"]).status.success().then_some(())
    });
    for (pod, node) in [("pod-a", "node-0"), ("pod-b", "node-1")] {
        let manifest = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{pod}","namespace":"calico-test"}},"spec":{{"nodeName":"{node}","containers":[{{"name":"app","image":"busybox","command":["sleep","3600"]}}]}}}}"#
        );
        let path = state.join(format!("{pod}.json"));
        std::fs::write(&path, manifest).unwrap();
        lab.kubectl_ok(&["create", "-f", path.to_str().unwrap()]);
    }
    lab.kubectl_ok(&["wait", "-n", "calico-test", "--for=condition=Ready", "pod/pod-a", "pod/pod-b", "--timeout=120s"]);
    let ip_a = lab.kubectl_ok(&["get", "pod", "-n", "calico-test", "pod-a", "-o", "jsonpath={.status.podIP}"]);
    let ip_b = lab.kubectl_ok(&["get", "pod", "-n", "calico-test", "pod-b", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        ip_a.starts_with("192.168.") && ip_b.starts_with("192.168."),
        "pod addresses from the default pool: {ip_a} {ip_b}"
    );

    let connectivity = |what: &str| {
        let ping = eventually(&format!("{what}: pod-a pings pod-b"), Duration::from_secs(60), || {
            let out = lab.pod_exec("pod-a", &format!("ping -c 3 -W 2 {ip_b}"));
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        assert!(ping.contains("3 received") || ping.contains("3 packets received"), "{what}: {ping}");
        // The server sees the client pod's own address: no NAT between pods.
        let server = Command::new("ip")
            .args(["netns", "exec", &tabby_e2e::lab::runner::pod_netns(&lab.kubectl_ok(&["get", "pod", "-n", "calico-test", "pod-b", "-o", "jsonpath={.metadata.uid}"])),
                   "python3", "-c", "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',8080));s.listen(1);s.settimeout(30);c,a=s.accept();print(a[0]);c.close()"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let client = lab.pod_exec(
            "pod-a",
            &format!("python3 -c \"import socket;s=socket.create_connection(('{ip_b}',8080),5);s.close()\""),
        );
        assert!(client.status.success(), "{what}: TCP connect: {}", String::from_utf8_lossy(&client.stderr));
        let seen = String::from_utf8_lossy(&server.wait_with_output().unwrap().stdout).trim().to_string();
        assert_eq!(seen, ip_a, "{what}: the server sees pod-a's own address");
    };
    connectivity("BGP");
    let trace = lab.pod_exec("pod-a", &format!("traceroute -n -w 1 -q 1 {ip_b}"));
    let trace = String::from_utf8_lossy(&trace.stdout).into_owned();
    assert!(
        trace.contains("192.168.100.100") && trace.contains("192.168.100.101") && trace.contains(&ip_b),
        "direct routing through the nodes: {trace}"
    );

    // Routes on a node: proto tabby to the other nodes' blocks via their addresses, dev tby… to local pods.
    let routes = lab.node_exec(0, "ip route");
    assert!(routes.lines().any(|l| l.contains("proto tabby") && l.contains("via 192.168.100.101")), "{routes}");
    assert!(routes.lines().any(|l| l.starts_with(&ip_a) && l.contains("dev tby")), "{routes}");

    // kubectl tabby, as calicoctl users know it.
    let status = eventually("mesh Established", Duration::from_secs(60), || {
        let s = lab.tabby(&["node", "status", "node-0"]);
        (s.matches("Established").count() >= 2).then_some(s)
    });
    assert!(status.contains("node-to-node mesh"), "{status}");
    let pools = lab.tabby(&["get", "ippool", "-o", "wide"]);
    assert!(pools.contains("default-ipv4-ippool") && pools.contains("192.168.0.0/16"), "{pools}");
    let weps = lab.tabby(&["get", "workloadendpoint", "-n", "calico-test"]);
    assert!(
        weps.contains("pod-a") && weps.contains("node-0") && weps.contains(&ip_a) && weps.contains("tby"),
        "{weps}"
    );
    assert!(weps.contains("pod-b") && weps.contains("node-1") && weps.contains(&ip_b), "{weps}");
    let bgp = lab.tabby(&["get", "bgpconfig", "default", "-o", "yaml"]);
    assert!(bgp.contains("asNumber: 64512"), "{bgp}");
    let ipam = lab.tabby(&["ipam", "show"]);
    assert!(ipam.contains("192.168.0.0/16"), "{ipam}");
    let check = lab.tabby(&["ipam", "check"]);
    assert!(check.contains("found 0 problems"), "{check}");

    // Switch the pool to VXLAN by editing the Installation: the DaemonSet rolls, traffic recovers.
    lab.kubectl_ok(&[
        "patch",
        "installation",
        "default",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/network/ipPools/0/encapsulation","value":"VXLAN"}]"#,
    ]);
    eventually("pool in VXLAN mode", Duration::from_secs(60), || {
        (lab.json(&["get", "ippool", "default-ipv4-ippool"])["spec"]["vxlanMode"] == "Always").then_some(())
    });
    lab.kubectl_ok(&["wait", "--for=condition=Available", "tabbystatus/network", "--timeout=180s"]);
    connectivity("VXLAN");
    assert!(lab.node_exec(0, "ip -d link show vxlan.tabby").contains("vxlan id 4096"), "the VXLAN device");

    // Uninstall: teardown completes and the nodes hold nothing of Tabby.
    lab.kubectl_ok(&["delete", "pod", "-n", "calico-test", "pod-a", "pod-b", "--wait=true", "--timeout=60s"]);
    lab.kubectl_ok(&["delete", "installation", "default", "--timeout=180s"]);
    for node in 0..3 {
        let routes = lab.node_exec(node, "ip route");
        assert!(!routes.contains("proto tabby") && !routes.contains("blackhole"), "node-{node} routes: {routes}");
        let links = lab.node_exec(node, "ip -o link");
        assert!(!links.contains("tby") && !links.contains("vxlan.tabby"), "node-{node} links: {links}");
        let nft = lab.node_exec(node, "nft list tables");
        assert!(!nft.contains("tabby"), "node-{node} nftables: {nft}");
        let dir = state.join(format!("nodes/node-{node}"));
        assert!(
            !dir.join("etc/cni/net.d/10-tabby.conflist").exists() && !dir.join("opt/cni/bin/tabby").exists(),
            "node-{node} CNI files"
        );
    }

    drop(lab);
    // Nothing the lab made is left: every namespace, link and mount that is new since the start and carries
    // one of the lab's names. (Tests running beside this one may add and remove their own meanwhile.)
    let after = snapshot();
    let lab_made = |l: &str| {
        [
            "tabby-node-",
            "tabby-pod-",
            "tlab",
            "tabbylab",
            "/host/",
            "/etc/cni",
            "/opt/cni",
            "/var/run/tabby",
            "/var/lib/tabby",
        ]
        .iter()
        .any(|p| l.contains(p))
    };
    for (what, b, a) in
        [("netns", &before.0, &after.0), ("links", &before.1, &after.1), ("mounts", &before.2, &after.2)]
    {
        let left: Vec<&str> = a.lines().filter(|l| lab_made(l) && !b.lines().any(|x| x == *l)).collect();
        assert!(left.is_empty(), "make lab-down left {what}: {left:?}");
    }
    let left = lab_processes(&bin_dir());
    assert!(left.is_empty(), "lab processes left: {left:?}");
    let _ = repo_root();
}
