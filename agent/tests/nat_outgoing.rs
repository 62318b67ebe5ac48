//! NAT outgoing: a pod reaches an address outside the pools (the "internet", 203.0.113.1 in the underlay
//! namespace, which has no route back to pods) with its node's address as source, while pod-to-pod keeps
//! pod addresses. The nftables table changes by elements only: adding a pool keeps the rules. A NAT batch
//! that cannot be applied is reported on NodeStatus until it can.

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::time::{Duration, Instant};

use tabby_testkit::nodelab::*;

fn rule_handles(n: &Node) -> Vec<String> {
    let out = n.ns.ok(&["nft", "-a", "list", "chain", "inet", "tabby", "postrouting"]);
    out.lines()
        .filter(|l| l.contains("masquerade"))
        .filter_map(|l| l.rsplit("# handle ").next().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_outgoing_to_the_internet_but_not_between_pods() {
    let _g = serial();
    let Some(mut lab) = Lab::new("nat_outgoing_to_the_internet_but_not_between_pods", 2, Underlay::Flat).await else {
        return;
    };
    if !require_tools("nat_outgoing", &["nft"]) {
        return;
    }
    lab.pool("10.247.0.0/16", "Never", true);
    lab.start_agents(&[("TABBY_BGP", "Enabled"), ("TABBY_ROUTE_RESYNC_SECONDS", "2")]);
    lab.add_pod("node1", "a");
    lab.add_pod("node2", "b");
    let b2 = lab.blocks_of("node2");
    let n1 = lab.node("node1");
    n1.wait_routes("routes to node2", Duration::from_secs(60), |r| b2.iter().all(|b| r.contains(&format!("{b} via"))));
    let start = Instant::now();
    while !n1.ns.exec(&["nft", "list", "table", "inet", "tabby"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(30), "no nftables table:\n{}", n1.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = n1.ns.ok(&["nft", "list", "table", "inet", "tabby"]);
    assert!(table.contains("10.247.0.0/16") && table.contains("masquerade"), "{table}");

    let (a, b) = (lab.pod("a"), lab.pod("b"));
    let seen = seen_source(&lab.ul, &a.ns, "203.0.113.1", 7073);
    assert_eq!(seen.to_string(), n1.addr, "the internet sees the node's address");
    assert_eq!(seen_source(&b.ns, &a.ns, &b.ip, 7074).to_string(), a.ip, "pod-to-pod is not masqueraded");

    // A second pool: its CIDR joins the sets; the rules are not rewritten.
    let before = rule_handles(n1);
    assert_eq!(before.len(), 2, "two masquerade rules (IPv4, IPv6)");
    lab.apply("apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {name: second}\nspec: {cidr: '10.248.0.0/16', natOutgoing: false}\n");
    let start = Instant::now();
    loop {
        let t = n1.ns.ok(&["nft", "list", "set", "inet", "tabby", "pools4"]);
        if t.contains("10.248.0.0/16") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "second pool not in the set: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rule_handles(n1), before, "rules untouched by an element change");
    let masq = n1.ns.ok(&["nft", "list", "set", "inet", "tabby", "masq4"]);
    assert!(!masq.contains("10.248.0.0/16"), "natOutgoing false is not masqueraded: {masq}");

    // Deleted by hand: the table is read back every resync (2 s here), off the pass, and the next apply
    // puts the element back.
    n1.ns.ok(&["nft", "delete", "element", "inet", "tabby", "pools4", "{ 10.248.0.0/16 }"]);
    let start = Instant::now();
    loop {
        let t = n1.ns.ok(&["nft", "list", "set", "inet", "tabby", "pools4"]);
        if t.contains("10.248.0.0/16") {
            eprintln!("element repaired in {:?}", start.elapsed());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the deleted element did not come back: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn condition(lab: &Lab, node: &str, t: &str) -> (String, String, String) {
    let field = |f: &str| {
        let path = format!("jsonpath={{.status.conditions[?(@.type==\"{t}\")].{f}}}");
        String::from_utf8_lossy(&lab.cp.kubectl(&["get", "nodestatus", node, "-o", &path]).stdout).trim().to_string()
    };
    (field("status"), field("reason"), field("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_batch_that_fails_is_reported_on_node_status() {
    let _g = serial();
    let Some(mut lab) = Lab::new("a_nat_batch_that_fails_is_reported_on_node_status", 1, Underlay::Flat).await else {
        return;
    };
    if !require_tools("nat_outgoing", &["nft"]) {
        return;
    }
    lab.pool("10.247.0.0/16", "Never", true);
    // The agent's PATH holds `ip` (which starts it in the node's namespace) and no `nft`.
    let bin = lab.dir.path().join("no-nft-bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let ip = tabby_testkit::skip::which("ip").expect("ip is installed");
    std::os::unix::fs::symlink(ip, bin.join("ip")).expect("link ip");
    let no_nft = bin.to_str().expect("utf-8 path").to_string();
    lab.start_agents(&[("TABBY_BGP", "Disabled"), ("PATH", &no_nft)]);
    lab.wait_for("node1", "RoutesReady=False (NATOutgoingFailed)", Duration::from_secs(60), || {
        condition(&lab, "node1", "RoutesReady").1 == "NATOutgoingFailed"
    });
    let (status, _, message) = condition(&lab, "node1", "RoutesReady");
    assert_eq!(status, "False");
    assert!(message.contains("nft"), "the message says what failed: {message}");
    assert_eq!(condition(&lab, "node1", "Ready").0, "False", "a node without NAT outgoing is not Ready");
    let log = lab.node("node1").log_tail();
    assert!(log.contains("\"subsystem\":\"nat\""), "the failure is logged by subsystem:\n{log}");

    // With nft back, the table is programmed and the node becomes Ready.
    let n = lab.node_mut("node1");
    n.kill_agent("-TERM");
    n.set_env(&[("TABBY_BGP", "Disabled")]);
    n.start_agent();
    n.wait_ready();
    lab.wait_node_status_ready("node1", Duration::from_secs(60));
    let table = lab.node("node1").ns.ok(&["nft", "list", "table", "inet", "tabby"]);
    assert!(table.contains("10.247.0.0/16") && table.contains("masquerade"), "{table}");
}
