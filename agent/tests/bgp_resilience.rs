//! BGP resilience: an agent restart (SIGTERM, as in a rolling update) while a ping runs between pods on
//! different nodes loses no packet (graceful restart, routes kept in the kernel) and never removes a pod
//! route, blackhole or learned route from either node's kernel; a lost node's routes are withdrawn within
//! the hold time (9 s here).

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tabby_testkit::nodelab::*;

/// `ip monitor route` in a namespace until killed.
fn monitor(ns: &Netns) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip", "monitor", "route"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ip monitor starts")
}

/// The deletions a monitor saw that concern one of `prefixes`.
fn deletions(mut m: std::process::Child, prefixes: &[String]) -> Vec<String> {
    let _ = m.kill();
    let out = m.wait_with_output().expect("ip monitor output");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Deleted") && prefixes.iter().any(|p| l.contains(&format!(" {p} "))))
        .map(String::from)
        .collect()
}

fn loss(out: &str) -> (u32, u32) {
    let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("ping output: {out}"));
    let nums: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    (nums[0], nums[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_agent_restart_loses_no_packet() {
    let _g = serial();
    let Some(mut lab) = Lab::new("bgp_agent_restart_loses_no_packet", 2, Underlay::Flat).await else { return };
    lab.pool("10.249.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Enabled")]);
    lab.add_pod("node1", "a");
    lab.add_pod("node2", "b");
    let b2 = lab.blocks_of("node2");
    let b1 = lab.blocks_of("node1");
    lab.node("node1")
        .wait_routes("routes", Duration::from_secs(60), |r| b2.iter().all(|b| r.contains(&format!("{b} via"))));
    lab.node("node2")
        .wait_routes("routes", Duration::from_secs(60), |r| b1.iter().all(|b| r.contains(&format!("{b} via"))));
    let (a_ns, b_ip) = (lab.pod("a").ns.name.clone(), lab.pod("b").ip.clone());
    let a_ip = lab.pod("a").ip.clone();
    // Every route the traffic needs: pod routes, the blocks (blackholes at home, learned elsewhere).
    let watched: Vec<String> = [a_ip.clone(), b_ip.clone()].into_iter().chain(b1.clone()).chain(b2.clone()).collect();
    let monitors = [monitor(&lab.node("node1").ns), monitor(&lab.node("node2").ns)];
    let ping = Command::new("ip")
        .args(["netns", "exec", &a_ns, "ping", "-i", "0.05", "-c", "240", "-W", "1", &b_ip])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping starts");
    std::thread::sleep(Duration::from_secs(2));
    // Rolling update of node2's agent: SIGTERM, a new process a moment later.
    let n2 = lab.node_mut("node2");
    n2.kill_agent("-TERM");
    std::thread::sleep(Duration::from_secs(1));
    n2.start_agent();
    n2.wait_ready();
    // And node1's too.
    std::thread::sleep(Duration::from_secs(2));
    let n1 = lab.node_mut("node1");
    n1.kill_agent("-TERM");
    std::thread::sleep(Duration::from_millis(500));
    n1.start_agent();
    n1.wait_ready();
    let out = ping.wait_with_output().expect("ping ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, got) = loss(&text);
    eprintln!("ping across two agent restarts: {sent} sent, {got} received");
    for (m, node) in monitors.into_iter().zip(["node1", "node2"]) {
        let gone = deletions(m, &watched);
        assert!(gone.is_empty(), "{node}: routes removed during the restarts: {gone:?}");
    }
    assert_eq!(sent, 240);
    assert_eq!(got, sent, "packets lost across agent restarts:\n{text}\n{}", lab.node("node1").log_tail());
    // Sessions come back.
    lab.wait_node_status_ready("node1", Duration::from_secs(60));
    lab.wait_node_status_ready("node2", Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_lost_node_routes_withdrawn_within_hold_time() {
    let _g = serial();
    let Some(mut lab) = Lab::new("bgp_lost_node_routes_withdrawn_within_hold_time", 3, Underlay::Flat).await else {
        return;
    };
    lab.pool("10.250.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Enabled")]);
    lab.add_pod("node3", "c");
    let b3 = lab.blocks_of("node3");
    let n1 = lab.node("node1");
    n1.wait_routes("routes to node3", Duration::from_secs(60), |r| b3.iter().all(|b| r.contains(&format!("{b} via"))));
    // node3 disappears: its agent dies and its uplink goes down (no TCP close reaches the peers).
    let n3 = lab.node_mut("node3");
    n3.ns.ip(&["link", "set", "eth0", "down"]);
    n3.kill_agent("-KILL");
    let start = Instant::now();
    let n1 = lab.node("node1");
    let took =
        n1.wait_routes("withdrawal", Duration::from_secs(12), |r| !b3.iter().any(|b| r.contains(&format!("{b} via"))));
    eprintln!("node3's routes withdrawn after {took:?} (hold time 9 s)");
    assert!(start.elapsed() <= Duration::from_secs(12));
}
