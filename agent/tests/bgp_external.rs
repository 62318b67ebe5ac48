//! External BGP: a BIRD 2 router (its own namespace on the node network) peers with every node through a
//! global BGPPeer with an MD5 password from a Secret and learns every pod block, and sees the BGPPeer's
//! `maxRestartTime` as our graceful-restart time and its `keepaliveTime` in our KEEPALIVE rate; a route reflector
//! topology (1 reflector, 4 clients, mesh off) converges with the clients' routes pointing at each other.

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tabby_testkit::nodelab::*;

struct Bird {
    child: Child,
    sock: std::path::PathBuf,
}

impl Bird {
    fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc").arg("-s").arg(&self.sock).args(args).output().expect("birdc runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_external_bird_with_md5_learns_every_block() {
    let _g = serial();
    let Some(mut lab) = Lab::new("bgp_external_bird_with_md5_learns_every_block", 3, Underlay::Flat).await else {
        return;
    };
    if !require_tools("bgp_external", &["bird"]) {
        return;
    }
    // The router: a namespace on the node network.
    let router = Netns::new("rtr");
    lab.plug(&router, "192.168.50.100");
    let dir = lab.dir.path().join("bird");
    std::fs::create_dir_all(&dir).expect("bird dir");
    let mut conf = String::from("router id 192.168.50.100;\nprotocol device {}\n");
    for n in &lab.nodes {
        conf += &format!(
            "protocol bgp {} {{ local 192.168.50.100 as 65000; neighbor {} as 64512; password \"s3cret-md5\"; connect retry time 1; ipv4 {{ import all; export none; }}; }}\n",
            n.name, n.addr
        );
    }
    std::fs::write(dir.join("bird.conf"), conf).expect("bird.conf");
    let sock = dir.join("bird.ctl");
    let child = Command::new("ip")
        .args(["netns", "exec", &router.name, "bird", "-f", "-c"])
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(&sock)
        .arg("-P")
        .arg(dir.join("bird.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bird starts");
    let bird = Bird { child, sock };

    lab.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: bgp-secrets, namespace: tabby-system}\nstringData: {router: s3cret-md5}\n");
    lab.apply(
        "apiVersion: tabby.dev/v1\nkind: BGPPeer\nmetadata: {name: router}\nspec:\n  peerIP: 192.168.50.100\n  asNumber: 65000\n  password: {secretKeyRef: {name: bgp-secrets, key: router}}\n  maxRestartTime: 45s\n  keepaliveTime: 1s\n",
    );
    lab.pool("10.251.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Enabled")]);
    let blocks: Vec<String> = ["node1", "node2", "node3"].iter().flat_map(|n| lab.blocks_of(n)).collect();
    assert_eq!(blocks.len(), 3, "one block per node: {blocks:?}");
    let start = Instant::now();
    loop {
        let routes = bird.birdc(&["show", "route"]);
        let all = blocks.iter().all(|b| routes.contains(b.as_str()));
        if all {
            for n in &lab.nodes {
                for b in lab.blocks_of(&n.name) {
                    // `<block> unicast [nodeN …]` then `\tvia <node address> on eth0`.
                    let line = routes.lines().skip_while(|l| !l.contains(&b)).nth(1).unwrap_or_default().to_string();
                    assert!(line.contains(&format!("via {}", n.addr)), "{b} not via {}:\n{routes}", n.addr);
                }
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "BIRD did not learn every block {blocks:?}:\n{routes}\n{}\n{}",
            bird.birdc(&["show", "protocols", "all"]),
            lab.node("node1").log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let protos = bird.birdc(&["show", "protocols"]);
    assert_eq!(protos.matches("Established").count(), 3, "{protos}");
    // Per-peer timers, as BIRD sees them: our graceful-restart capability carries maxRestartTime, and
    // node1 sends a KEEPALIVE (19 octets) every second, where the default would be a third of the hold
    // time (9 s here, so every 3 s). Counted on BIRD's end of the TCP connection.
    let all = bird.birdc(&["show", "protocols", "all", "node1"]);
    let theirs = all.split("Neighbor capabilities").nth(1).unwrap_or_default();
    assert!(theirs.contains("Restart time: 45"), "BIRD should see restart time 45:\n{all}");
    let n1 = lab.node("node1").addr.clone();
    let received = || -> u64 {
        let out = router.ok(&["ss", "-tin", "state", "established", "dst", &n1]);
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("bytes_received:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no connection from node1 in:\n{out}"))
    };
    let before = received();
    std::thread::sleep(Duration::from_secs(6));
    let keepalives = (received() - before) / 19;
    assert!((5..=8).contains(&keepalives), "{keepalives} KEEPALIVEs from node1 in 6 s, want about 6");
    // NodeStatus names the router as a global peer.
    lab.wait_node_status_ready("node2", Duration::from_secs(60));
    let st = lab.cp.kubectl_ok(&["get", "nodestatus", "node2", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&st).expect("json");
    let peers = v["status"]["bgp"]["peersV4"].as_array().expect("peers").clone();
    assert!(
        peers
            .iter()
            .any(|p| p["peerIP"] == "192.168.50.100" && p["type"] == "GlobalPeer" && p["state"] == "Established"),
        "{peers:?}"
    );
    drop(router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_route_reflector_with_four_clients_converges() {
    let _g = serial();
    let Some(mut lab) = Lab::new("bgp_route_reflector_with_four_clients_converges", 5, Underlay::Flat).await else {
        return;
    };
    lab.cp.kubectl_ok(&["label", "node", "node1", "rr=true"]);
    lab.cp.kubectl_ok(&["annotate", "node", "node1", "tabby.dev/route-reflector-cluster-id=224.0.0.1"]);
    lab.apply("apiVersion: tabby.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshEnabled: false}\n");
    lab.apply(
        "apiVersion: tabby.dev/v1\nkind: BGPPeer\nmetadata: {name: to-reflector}\nspec: {nodeSelector: all(), peerSelector: has(rr)}\n",
    );
    lab.pool("10.252.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Enabled")]);
    let clients = ["node2", "node3", "node4", "node5"];
    let start = Instant::now();
    for c in clients {
        let n = lab.node(c);
        for other in clients.iter().filter(|o| **o != c) {
            let via = lab.node(other).addr.clone();
            let blocks = lab.blocks_of(other);
            n.wait_routes("reflected routes", Duration::from_secs(60), |r| {
                blocks.iter().all(|b| r.contains(&format!("{b} via {via} dev eth0 proto tabby")))
            });
        }
    }
    eprintln!("route reflector topology converged in {:?}", start.elapsed());
    // Clients peer with the reflector only; the reflector treats them as clients.
    lab.wait_node_status_ready("node1", Duration::from_secs(60));
    let st = lab.cp.kubectl_ok(&["get", "nodestatus", "node1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&st).expect("json");
    let peers = v["status"]["bgp"]["peersV4"].as_array().expect("peers").clone();
    assert_eq!(peers.len(), 4, "{peers:?}");
    assert!(peers.iter().all(|p| p["type"] == "RouteReflectorClient"), "{peers:?}");
    lab.wait_node_status_ready("node3", Duration::from_secs(60));
    let st = lab.cp.kubectl_ok(&["get", "nodestatus", "node3", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&st).expect("json");
    let peers = v["status"]["bgp"]["peersV4"].as_array().expect("peers").clone();
    assert_eq!(peers.len(), 1, "a client peers with the reflector only: {peers:?}");
    assert_eq!(peers[0]["peerIP"], "192.168.50.1");
}
