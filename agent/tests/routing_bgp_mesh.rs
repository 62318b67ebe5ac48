//! Three nodes in a BGP full mesh: `proto tabby` routes to the other nodes' blocks, blackholes for the
//! own blocks, pod-to-pod ping across nodes, the expected traceroute hops, and the server seeing the
//! client pod's own address (no NAT: the flat network). Then route repair and NodeStatus.

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

mod routing_support;

use std::time::{Duration, Instant};

use routing_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_bgp_mesh_three_nodes_pod_to_pod() {
    let _g = serial();
    let Some(mut lab) = Lab::new("routing_bgp_mesh_three_nodes_pod_to_pod", 3, Underlay::Flat).await else { return };
    if !require_tool("routing_bgp_mesh", "traceroute") {
        return;
    }
    lab.pool("10.244.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Enabled")]);
    lab.add_pod("node1", "client");
    lab.add_pod("node3", "server");
    let (n1, n3) = (lab.node("node1"), lab.node("node3"));
    let b1 = lab.blocks_of("node1");
    let b3 = lab.blocks_of("node3");
    assert!(!b1.is_empty() && !b3.is_empty(), "blocks: {b1:?} {b3:?}");

    // Each node: proto tabby routes to the others' blocks via their addresses, a blackhole for its own.
    for (node, theirs, via, own) in [(n1, &b3, &n3.addr, &b1), (n3, &b1, &n1.addr, &b3)] {
        node.wait_routes("routes to the other blocks", Duration::from_secs(60), |r| {
            theirs.iter().all(|b| r.contains(&format!("{b} via {via} dev eth0 proto tabby")))
                && own.iter().all(|b| r.contains(&format!("blackhole {b} proto tabby")))
        });
    }
    let n2 = lab.node("node2");
    n2.wait_routes("routes on node2", Duration::from_secs(60), |r| {
        b1.iter().chain(&b3).all(|b| r.contains(&format!("{b} via")) && r.contains("proto tabby"))
    });

    let (client, server) = (lab.pod("client"), lab.pod("server"));
    assert!(ping(&client.ns, &server.ip, 3), "ping {} → {} failed\n{}", client.ip, server.ip, n1.routes());
    let hops = traceroute(&client.ns, &server.ip);
    assert_eq!(hops.len(), 3, "hops {hops:?}");
    assert_eq!(hops[1], n3.addr, "second hop is the server's node: {hops:?}");
    assert_eq!(hops[2], server.ip, "last hop is the server pod: {hops:?}");
    let seen = seen_source(&server.ns, &client.ns, &server.ip, 7070);
    assert_eq!(seen.to_string(), client.ip, "the server sees the client pod's own address");

    // Route repair: a deleted Tabby route is back within a second.
    let victim = b3[0].clone();
    let start = Instant::now();
    n1.ns.ip(&["route", "del", &victim]);
    let took = n1.wait_routes("repaired route", Duration::from_secs(1), |r| {
        r.contains(&format!("{victim} via {} dev eth0 proto tabby", n3.addr))
    });
    eprintln!("route repaired in {:?} ({:?} including the delete)", took, start.elapsed());
    // A deleted pod route (CNI-made, same protocol) comes back too.
    n3.ns.ip(&["route", "del", &format!("{}/32", server.ip)]);
    n3.wait_routes("repaired pod route", Duration::from_secs(1), |r| {
        r.contains(&format!("{} dev tby", server.ip)) && r.contains("scope link")
    });

    // NodeStatus and the Node condition.
    for n in ["node1", "node2", "node3"] {
        lab.wait_node_status_ready(n, Duration::from_secs(60));
    }
    let ns = lab.cp.kubectl_ok(&["get", "nodestatus", "node1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&ns).expect("json");
    assert_eq!(v["status"]["addressV4"], "192.168.50.1/24");
    assert_eq!(v["status"]["bgp"]["peersEstablished"], 2, "{v}");
    let peers = v["status"]["bgp"]["peersV4"].as_array().expect("peers");
    assert!(peers.iter().all(|p| p["type"] == "NodeMesh" && p["state"] == "Established"), "{peers:?}");
    assert!(v["status"]["routes"]["remote"].as_i64().unwrap_or(0) >= 2, "{v}");
    let cond = lab.cp.kubectl_ok(&[
        "get",
        "node",
        "node1",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"NetworkUnavailable\")].status}/{.status.conditions[?(@.type==\"NetworkUnavailable\")].reason}",
    ]);
    assert_eq!(cond, "False/TabbyIsUp");
}
