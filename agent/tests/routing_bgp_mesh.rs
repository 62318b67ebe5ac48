//! Three nodes in a BGP full mesh: `proto tabby` routes to the other nodes' blocks, blackholes for the
//! own blocks, pod-to-pod ping across nodes, the expected traceroute hops, and the server seeing the
//! client pod's own address (no NAT: the flat network). Then route repair and NodeStatus.

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tabby_testkit::nodelab::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_bgp_mesh_three_nodes_pod_to_pod() {
    let _g = serial();
    let Some(mut lab) = Lab::new("routing_bgp_mesh_three_nodes_pod_to_pod", 3, Underlay::Flat).await else { return };
    if !require_tools("routing_bgp_mesh", &["traceroute"]) {
        return;
    }
    lab.pool("10.244.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Enabled")]);
    lab.add_pod("node1", "client");
    lab.add_pod("node3", "server");
    let (n1, n3) = (lab.node("node1"), lab.node("node3"));
    // Each node: proto tabby routes to every other node's blocks via that node's address, a blackhole
    // for its own.
    let names = ["node1", "node2", "node3"];
    let blocks: Vec<Vec<String>> = names.iter().map(|n| lab.blocks_of(n)).collect();
    assert!(blocks.iter().all(|b| !b.is_empty()), "every agent claims a block when it starts: {blocks:?}");
    let b3 = blocks[2].clone();
    for (i, me) in names.iter().enumerate() {
        let node = lab.node(me);
        node.wait_routes("routes to the other blocks", Duration::from_secs(60), |r| {
            names.iter().enumerate().filter(|(j, _)| *j != i).all(|(j, other)| {
                let via = &lab.node(other).addr;
                blocks[j].iter().all(|b| r.contains(&format!("{b} via {via} dev eth0 proto tabby")))
            }) && blocks[i].iter().all(|b| r.contains(&format!("blackhole {b} proto tabby")))
        });
    }

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
    // Ready can be reported before the last route is counted: the next network pass (every few
    // seconds) reports the rest.
    let start = Instant::now();
    let v = loop {
        let ns = lab.cp.kubectl_ok(&["get", "nodestatus", "node1", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&ns).expect("json");
        let done =
            v["status"]["bgp"]["peersEstablished"] == 2 && v["status"]["routes"]["remote"].as_i64().unwrap_or(0) >= 2;
        if done || start.elapsed() > Duration::from_secs(30) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
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

/// NodeStatus/<node>'s IPv4 peers as (address, state, since).
fn peers_of(lab: &Lab, node: &str) -> Vec<(String, String, String)> {
    let out = lab.cp.kubectl(&["get", "nodestatus", node, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut peers: Vec<(String, String, String)> = ["peersV4", "peersV6"]
        .iter()
        .flat_map(|f| v["status"]["bgp"][f].as_array().cloned().unwrap_or_default())
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("peerIP"), s("state"), s("since"))
        })
        .collect();
    peers.sort();
    peers
}

fn wait_established(lab: &Lab, node: &str, n: usize) -> Vec<(String, String, String)> {
    let start = Instant::now();
    loop {
        let p = peers_of(lab, node);
        if p.len() == n && p.iter().all(|(_, s, _)| s == "Established") {
            return p;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{node}: {n} established peers not seen: {p:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_bgp_mesh_fourth_node_joins_without_resetting_sessions() {
    let _g = serial();
    let test = "routing_bgp_mesh_fourth_node_joins_without_resetting_sessions";
    // Four node namespaces; node4's agent starts later, so until then its Node has no address and no
    // other node peers with it.
    let Some(mut lab) = Lab::new(test, 4, Underlay::Flat).await else { return };
    lab.pool("10.245.0.0/16", "Never", false);
    for n in ["node1", "node2", "node3"] {
        lab.node_mut(n).start_agent();
    }
    for n in ["node1", "node2", "node3"] {
        lab.node(n).wait_ready();
    }
    lab.add_pod("node1", "a");
    lab.add_pod("node3", "c");
    let (b1, b3) = (lab.blocks_of("node1"), lab.blocks_of("node3"));
    let n3addr = lab.node("node3").addr.clone();
    lab.node("node1").wait_routes("routes to node3", Duration::from_secs(60), |r| {
        b3.iter().all(|b| r.contains(&format!("{b} via {n3addr} dev eth0 proto tabby")))
    });
    let before: Vec<_> = ["node1", "node2", "node3"].iter().map(|n| wait_established(&lab, n, 2)).collect();
    // The NodeStatus `since` has one-second resolution: a reset during the join must land in a later second.
    std::thread::sleep(Duration::from_millis(1100));

    // Watch the kernels and the data path while node4 joins.
    let monitors: Vec<_> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| {
            Command::new("ip")
                .args(["netns", "exec", &lab.node(n).ns.name, "ip", "monitor", "route"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("ip monitor")
        })
        .collect();
    let ping = Command::new("ip")
        .args(["netns", "exec", &lab.pod("a").ns.name, "ping", "-i", "0.05", "-c", "200", "-W", "1", &lab.pod("c").ip])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping starts");
    lab.node_mut("node4").start_agent();
    lab.node("node4").wait_ready();
    lab.add_pod("node4", "d");
    let b4 = lab.blocks_of("node4");
    let n4addr = lab.node("node4").addr.clone();
    for n in ["node1", "node2", "node3"] {
        lab.node(n).wait_routes("routes to node4", Duration::from_secs(60), |r| {
            b4.iter().all(|b| r.contains(&format!("{b} via {n4addr} dev eth0 proto tabby")))
        });
    }
    lab.node("node4").wait_routes("routes on node4", Duration::from_secs(60), |r| {
        b1.iter().chain(&b3).all(|b| r.contains(&format!("{b} via")))
    });
    assert!(ping_ok(&lab.pod("d").ns, &lab.pod("a").ip), "the new node reaches the others' pods");
    let after: Vec<_> = ["node1", "node2", "node3"].iter().map(|n| wait_established(&lab, n, 3)).collect();

    // Every session that existed before is the same session: Established since the same second.
    for (b, a) in before.iter().zip(&after) {
        for old in b {
            assert!(a.contains(old), "session reset: before {old:?}, after {a:?}");
        }
    }
    let out = ping.wait_with_output().expect("ping ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "packets lost while node4 joined:\n{text}");
    // No route of the existing nodes flapped.
    let watched: Vec<String> =
        b1.iter().chain(&b3).cloned().chain([lab.pod("a").ip.clone(), lab.pod("c").ip.clone()]).collect();
    for (mut m, n) in monitors.into_iter().zip(["node1", "node2", "node3"]) {
        let _ = m.kill();
        let out = m.wait_with_output().expect("monitor output");
        let text = String::from_utf8_lossy(&out.stdout);
        let gone: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Deleted") && watched.iter().any(|p| l.contains(&format!(" {p} "))))
            .collect();
        assert!(gone.is_empty(), "{n}: routes removed while node4 joined: {gone:?}");
        let log = std::fs::read_to_string(lab.node(n).log()).unwrap_or_default();
        assert!(log.contains("BGP peers changed live"), "{n} applied the new peer live");
        assert!(!log.contains("BGP speaker restarted"), "{n} restarted its speaker");
    }
}

fn ping_ok(from: &Netns, to: &str) -> bool {
    ping(from, to, 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_bgp_mesh_dual_stack_pods_reach_each_other_over_ipv6() {
    let _g = serial();
    let test = "routing_bgp_mesh_dual_stack_pods_reach_each_other_over_ipv6";
    let Some(mut lab) = Lab::new(test, 2, Underlay::Flat).await else { return };
    lab.ipv6();
    lab.pool("10.246.0.0/16", "Never", false);
    lab.pool_v6("fd00:10:246::/112", "Never");
    lab.start_agents(&[("TABBY_BGP", "Enabled"), ("TABBY_IP6_AUTODETECTION_METHOD", "first-found")]);
    lab.add_pod("node1", "client6");
    lab.add_pod("node2", "server6");
    let v6_blocks =
        |node: &str| -> Vec<String> { lab.blocks_of(node).into_iter().filter(|b| b.contains(':')).collect() };
    let (b1, b2) = (v6_blocks("node1"), v6_blocks("node2"));
    assert!(!b1.is_empty() && !b2.is_empty(), "IPv6 blocks: {b1:?} {b2:?}");

    // As in Calico, each pair of nodes has two sessions: IPv4 routes between their IPv4 addresses, IPv6
    // routes between their IPv6 addresses. NodeStatus lists the second under peersV6.
    for (me, other) in [("node1", "node2"), ("node2", "node1")] {
        let peers: Vec<String> = wait_established(&lab, me, 2).into_iter().map(|(ip, _, _)| ip).collect();
        let other6 = if other == "node1" { "fd50::1" } else { "fd50::2" };
        assert_eq!(peers, vec![lab.node(other).addr.clone(), other6.to_string()], "{me}'s sessions");
    }
    let v6_sessions =
        lab.node("node1").ns.ok(&["ss", "-tnH", "state", "established", "( sport = :179 or dport = :179 )"]);
    assert!(v6_sessions.contains("[fd50::1]:") && v6_sessions.contains("[fd50::2]:"), "{v6_sessions}");
    // The IPv6 blocks go via the other node's IPv6 address, the own ones are blackholed.
    for (me, theirs, via, own) in [("node1", &b2, "fd50::2", &b1), ("node2", &b1, "fd50::1", &b2)] {
        lab.node(me).wait_routes6("IPv6 routes to the other node's blocks", Duration::from_secs(60), |r| {
            theirs.iter().all(|b| r.contains(&format!("{b} via {via} dev eth0 proto tabby")))
                && own
                    .iter()
                    .all(|b| r.lines().any(|l| l.starts_with(&format!("blackhole {b} ")) && l.contains("proto tabby")))
        });
    }
    let ns = lab.cp.kubectl_ok(&["get", "nodestatus", "node1", "-o", "jsonpath={.status.addressV6}"]);
    assert_eq!(ns, "fd50::1/64");

    let (client, server) = (lab.pod("client6"), lab.pod("server6"));
    let (c6, s6) = (client.ip6.clone().expect("client IPv6"), server.ip6.clone().expect("server IPv6"));
    assert!(
        ping(&client.ns, &s6, 3),
        "ping {c6} → {s6} failed\nnode1:\n{}\nnode2:\n{}",
        lab.node("node1").routes6(),
        lab.node("node2").routes6()
    );
    // The flat network over IPv6 too: the server sees the client pod's own address.
    let seen = seen_source(&server.ns, &client.ns, &s6, 7071);
    assert_eq!(seen.to_string(), c6);
    // IPv4 still works beside it.
    assert!(ping(&client.ns, &server.ip, 3), "ping {} → {} failed", client.ip, server.ip);

    // A node that stops forwarding IPv6 says so (the agent does not flip the switch itself).
    lab.wait_node_status_ready("node1", Duration::from_secs(60));
    let routes_ready = |lab: &Lab| {
        lab.cp.kubectl_ok(&[
            "get",
            "nodestatus",
            "node1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"RoutesReady\")].reason}: {.status.conditions[?(@.type==\"RoutesReady\")].message}",
        ])
    };
    lab.node("node1").ns.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
    lab.wait_for("node1", "RoutesReady=False, ForwardingDisabled", Duration::from_secs(30), || {
        routes_ready(&lab).starts_with("ForwardingDisabled: net.ipv6.conf.all.forwarding = 0")
    });
    lab.node("node1").ns.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    lab.wait_node_status_ready("node1", Duration::from_secs(30));
    assert!(routes_ready(&lab).starts_with("Programmed"), "{}", routes_ready(&lab));
}
