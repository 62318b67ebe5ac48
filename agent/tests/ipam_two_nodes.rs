//! Two nodes (two node network namespaces, each with its own agent process reaching the API server over
//! its own underlay) race through the real CNI plugin for the last addresses of a small pool: every
//! address is handed out once, no block has two owners, and the losers see "pool exhausted".

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tabby_testkit::nodelab::*;
use tabby_wire::code;

const PODS_PER_NODE: usize = 24;
/// 10.250.0.0/27 in /29 blocks: four blocks of eight addresses.
const POOL_SIZE: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_agents_race_for_a_small_pool() {
    let _g = serial();
    let Some(mut lab) = Lab::new("two_node_agents_race_for_a_small_pool", 2, Underlay::Flat).await else { return };
    lab.apply(
        "apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {name: small}\nspec: {cidr: '10.250.0.0/27', blockSize: 29}\n",
    );
    lab.start_agents(&[("TABBY_BGP", "Disabled")]);
    let mut pods = Vec::new();
    let mut objects = Vec::new();
    for node in ["node1", "node2"] {
        for i in 0..PODS_PER_NODE {
            let name = format!("{node}-p{i}");
            objects.push(format!(
                "- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: default}}, spec: {{nodeName: {node}, containers: [{{name: c, image: pause}}]}}}}"
            ));
            pods.push((node, name.clone(), Netns::new(&name)));
        }
    }
    lab.apply(&format!("apiVersion: v1\nkind: List\nitems:\n{}\n", objects.join("\n")));

    // Every ADD of both nodes at once.
    let outcomes: Vec<(String, AddOutcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(node, name, ns)| {
                let (n, path) = (lab.node(node), ns.path.clone());
                s.spawn(move || (name.clone(), cni_add(n, &path, name)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ADD thread")).collect()
    });

    let granted: Vec<(&String, &String)> =
        outcomes.iter().filter_map(|(name, r)| r.as_ref().ok().map(|ip| (name, ip))).collect();
    let failed: Vec<&(u64, String)> = outcomes.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert_eq!(granted.len(), POOL_SIZE, "every address of the pool handed out: {failed:?}");
    assert!(failed.iter().all(|(c, _)| *c == u64::from(code::POOL_EXHAUSTED)), "the rest see exhaustion: {failed:?}");
    let distinct: BTreeSet<&String> = granted.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(distinct.len(), POOL_SIZE, "no address handed out twice: {granted:?}");

    // The blocks agree: four blocks, one owner each (with one confirmed affinity), and their allocations
    // are exactly the granted addresses, each under the handle of the pod that got it.
    let blocks: Value = serde_json::from_str(&lab.cp.kubectl_ok(&["get", "ipamblocks", "-o", "json"])).expect("json");
    let blocks = blocks["items"].as_array().expect("items");
    assert_eq!(blocks.len(), 4, "{blocks:?}");
    let affinities: Value =
        serde_json::from_str(&lab.cp.kubectl_ok(&["get", "blockaffinities", "-o", "json"])).expect("json");
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in affinities["items"].as_array().expect("items") {
        assert_eq!(a["spec"]["state"], "confirmed", "{a}");
        owners
            .entry(a["spec"]["cidr"].as_str().expect("cidr").into())
            .or_default()
            .push(a["spec"]["node"].as_str().expect("node").into());
    }
    let mut recorded: BTreeMap<String, String> = BTreeMap::new();
    for b in blocks {
        let cidr = b["spec"]["cidr"].as_str().expect("cidr");
        let owner = b["spec"]["affinity"].as_str().expect("affinity").trim_start_matches("host:");
        assert_eq!(owners.get(cidr), Some(&vec![owner.to_string()]), "{cidr}: one affinity, its owner's");
        let base: std::net::Ipv4Addr = cidr.split('/').next().expect("addr").parse().expect("ipv4");
        let attrs = b["spec"]["attributes"].as_array().expect("attributes");
        for (ord, a) in b["spec"]["allocations"].as_array().expect("allocations").iter().enumerate() {
            if let Some(i) = a.as_u64() {
                let ip = std::net::Ipv4Addr::from(u32::from(base) + ord as u32).to_string();
                let handle = attrs[i as usize]["handle_id"].as_str().expect("handle").to_string();
                assert!(recorded.insert(ip, handle).is_none());
            }
        }
    }
    assert_eq!(recorded.len(), POOL_SIZE, "{recorded:?}");
    for (name, ip) in &granted {
        assert_eq!(recorded.get(*ip), Some(&format!("k8s-pod-network.cid-{name}")), "{ip} recorded for {name}");
    }
    // Both nodes took part.
    let nodes: BTreeSet<&String> = owners.values().flatten().collect();
    assert_eq!(nodes.len(), 2, "{owners:?}");
    // A failed ADD leaves nothing on its node: only the granted pods have host veths.
    let veths: usize = ["node1", "node2"]
        .iter()
        .map(|n| lab.node(n).ns.ip(&["-o", "link", "show"]).lines().filter(|l| l.contains(": tby")).count())
        .sum();
    assert_eq!(veths, POOL_SIZE, "one host veth per granted pod");
}
