//! The agent's Prometheus `/metrics`, scraped over HTTP from inside a lab node, against the node's real
//! state: routes by kind against the `proto tabby` routes in the kernel, BGP peers by state against
//! NodeStatus, IPAM allocations and blocks against the IPAMBlocks in the API, and reconcile durations
//! and errors (a status write that really fails while the NodeStatus CRD is gone).

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use tabby_testkit::nodelab::*;
use tabby_testkit::poll::wait;

const PORT: u16 = 9099;

/// GET /metrics on the node's health port (each node has its own namespace, so one port for all).
fn scrape(n: &Node) -> String {
    n.ns.run(|| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", PORT)).expect("connect to the health port");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: node\r\nconnection: close\r\n\r\n").expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    })
}

/// The value of one series (`name{labels}`), if present.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `(local, blackhole, remote)` routes with Tabby's protocol in the node's kernel.
fn kernel_routes(n: &Node) -> (f64, f64, f64) {
    let out = n.ns.ip(&["route", "show", "proto", "80"]);
    let (mut local, mut blackhole, mut remote) = (0.0, 0.0, 0.0);
    for l in out.lines() {
        if l.starts_with("blackhole ") {
            blackhole += 1.0;
        } else if l.contains(" dev tby") {
            local += 1.0;
        } else {
            remote += 1.0;
        }
    }
    (local, blackhole, remote)
}

fn routes_metric(m: &str) -> (f64, f64, f64) {
    let k = |kind: &str| value(m, &format!("tabby_agent_routes{{kind=\"{kind}\"}}")).unwrap_or(-1.0);
    (k("local"), k("blackhole"), k("remote"))
}

/// Polls until `check(scrape)` holds; the metrics follow reconcile passes, so they may lag a moment.
fn eventually(n: &Node, what: &str, check: impl Fn(&str) -> Result<(), String>) -> String {
    wait(&format!("{}: {what}", n.name), Duration::from_secs(60)).every(Duration::from_millis(200)).until_ok(|| {
        let m = scrape(n);
        match check(&m) {
            Ok(()) => Ok(m),
            Err(e) => Err(format!("{e}\nmetrics:\n{m}\nagent log:\n{}", n.log_tail())),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_node() {
    let _g = serial();
    let Some(mut lab) = Lab::new("metrics_match_the_node", 2, Underlay::Flat).await else {
        return;
    };
    lab.pool("10.249.0.0/16", "Never", false);
    lab.start_agents(&[
        ("TABBY_BGP", "Enabled"),
        ("TABBY_HEALTH_PORT", "9099"),
        ("TABBY_IPAM_GC_INTERVAL_SECONDS", "1"),
        ("TABBY_STATUS_HEARTBEAT_SECONDS", "1"),
    ]);
    lab.add_pod("node1", "a");
    lab.add_pod("node1", "b");
    lab.add_pod("node2", "c");
    let b2 = lab.blocks_of("node2");
    let n1 = lab.node("node1");
    n1.wait_routes("routes to node2", Duration::from_secs(60), |r| b2.iter().all(|b| r.contains(&format!("{b} via"))));

    // Routes by kind: what the kernel holds with proto tabby.
    let m = eventually(n1, "routes by kind match the kernel", |m| {
        let (want, got) = (kernel_routes(n1), routes_metric(m));
        if want == got { Ok(()) } else { Err(format!("kernel {want:?}, metrics {got:?}")) }
    });
    let (local, blackhole, remote) = routes_metric(&m);
    assert_eq!((local, blackhole), (2.0, 1.0), "two pods and one block on node1");
    assert!(remote >= 1.0, "node2's block is learned over BGP");

    // BGP peers by state: what NodeStatus reports (one mesh session, established; Ready says the
    // status was written with it up).
    lab.wait_node_status_ready("node1", Duration::from_secs(60));
    let ns: Value = serde_json::from_str(&lab.cp.kubectl_ok(&["get", "nodestatus", "node1", "-o", "json"])).unwrap();
    let peers = ns["status"]["bgp"]["peersV4"].as_array().cloned().unwrap_or_default();
    assert_eq!(peers.len(), 1, "{ns}");
    assert_eq!(peers[0]["state"], "Established", "{ns}");
    eventually(n1, "peers by state match NodeStatus", |m| {
        let e = value(m, "tabby_agent_bgp_peers{state=\"Established\"}");
        let idle = value(m, "tabby_agent_bgp_peers{state=\"Idle\"}");
        if e == Some(1.0) && idle == Some(0.0) { Ok(()) } else { Err(format!("established {e:?}, idle {idle:?}")) }
    });

    // IPAM: allocations and blocks of node1 in the API.
    let blocks: Value = serde_json::from_str(&lab.cp.kubectl_ok(&["get", "ipamblocks", "-o", "json"])).unwrap();
    let mine: Vec<&Value> =
        blocks["items"].as_array().expect("items").iter().filter(|b| b["spec"]["affinity"] == "host:node1").collect();
    let allocs: usize = mine
        .iter()
        .map(|b| b["spec"]["allocations"].as_array().map_or(0, |a| a.iter().filter(|x| !x.is_null()).count()))
        .sum();
    assert_eq!(allocs, 2, "{blocks}");
    let m = eventually(n1, "IPAM gauges match the blocks", |m| {
        let (a, b) = (value(m, "tabby_agent_ipam_allocations"), value(m, "tabby_agent_ipam_blocks"));
        if a == Some(allocs as f64) && b == Some(mine.len() as f64) { Ok(()) } else { Err(format!("{a:?} {b:?}")) }
    });

    // Reconcile passes of each subsystem this agent runs, none failed so far.
    for s in ["status", "node", "nat", "ipam"] {
        let count = value(&m, &format!("tabby_agent_reconcile_duration_seconds_count{{subsystem=\"{s}\"}}"));
        assert!(count.is_some_and(|c| c >= 1.0), "{s}: {count:?}\n{m}");
        let errors = value(&m, &format!("tabby_agent_reconcile_errors_total{{subsystem=\"{s}\"}}"));
        assert_eq!(errors, Some(0.0), "{s}\n{m}");
    }
    assert!(m.contains("# HELP tabby_agent_routes "), "{m}");

    // A real failure: without the NodeStatus CRD every status write fails, and is counted.
    let crd = tabby_testkit::repo_root().join("crds/nodestatuses.tabby.dev.yaml");
    let crd = crd.to_str().expect("utf-8 path");
    lab.cp.kubectl_ok(&["delete", "-f", crd, "--wait=true"]);
    eventually(n1, "status errors counted", |m| {
        let e = value(m, "tabby_agent_reconcile_errors_total{subsystem=\"status\"}");
        if e.is_some_and(|e| e >= 1.0) { Ok(()) } else { Err(format!("{e:?}")) }
    });
    lab.cp.kubectl_ok(&["create", "-f", crd]);
    lab.cp.kubectl_ok(&["wait", "--for=condition=Established", "-f", crd, "--timeout=60s"]);
    wait("NodeStatus written again", Duration::from_secs(60))
        .until(|| lab.cp.kubectl(&["get", "nodestatus", "node1"]).status.success(), || n1.log_tail());
}
