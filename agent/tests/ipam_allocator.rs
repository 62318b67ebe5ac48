//! The allocator under concurrency against a real control plane, through the real plugin and agent
//! processes: 200 concurrent ADDs, two agents racing on a small pool, an agent killed with SIGKILL in the
//! middle of 100 ADDs, and pool choice by selector, annotation and fixed address with the block limits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use kube::Api;
use kube::api::ListParams;
use tabby_api::ipam::{AffinityState, BlockAffinity};
use tabby_testkit::cluster::*;
use tabby_testkit::netns::Netns;
use tabby_testkit::skip::require_root;
use tabby_wire::code;
use tabby_wire::proto::Op;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_adds_then_dels() {
    let _serial = serial().await;
    if !require_root("two_hundred_concurrent_adds_then_dels") {
        return;
    }
    let Some(c) = Cluster::start("two_hundred_concurrent_adds_then_dels").await else { return };
    c.node("node-a");
    c.pool("pool-a", "10.244.0.0/16", 26);
    let agent = Agent::start(&c, "node-a", &[]);
    let node = Netns::node("node");
    let log = c.dir.path().join("cni.log");
    let cfg = conf("1.1.0", &agent.socket, &log);
    let pods: Vec<Netns> = (0..200).map(|i| Netns::new(&format!("p{i}"))).collect();
    let cni = |cmd: &str, i: usize| {
        let id = format!("cid{i:04}");
        Cni::new(cmd, &cfg, &id, &pods[i].path, "eth0").pod("load", &format!("pod-{i}"), &id).in_ns(&node)
    };

    let results: Mutex<BTreeMap<usize, Vec<String>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for i in 0..200 {
            let (cni, results) = (&cni, &results);
            s.spawn(move || {
                let r = cni("ADD", i).run();
                assert_eq!(r.code, 0, "ADD {i}: {}", r.stdout);
                results.lock().unwrap().insert(i, result_ips(&r.json));
            });
        }
    });
    let results = results.into_inner().unwrap();
    let returned: BTreeSet<String> = results.values().flatten().cloned().collect();
    assert_eq!(returned.len(), 200, "200 distinct addresses returned");
    let allocs = c.allocations().await;
    assert_eq!(allocs.len(), 200, "one handle per pod");
    assert!(allocs.values().all(|v| v.len() == 1), "each recorded once");
    assert_eq!(distinct(&allocs), returned, "the blocks hold exactly what ADD returned");
    assert_eq!(c.handles().await.len(), 200);
    assert_eq!(node.tabby_links().len(), 200);
    // Four /26 blocks are enough for 200 pods; the agent never claims more than it needs plus one.
    let blocks = c.blocks().await;
    assert!(blocks.len() <= 5, "{} blocks", blocks.len());
    assert!(blocks.iter().all(|b| b.spec.affinity.as_deref() == Some("host:node-a")));

    std::thread::scope(|s| {
        for i in 0..200 {
            let cni = &cni;
            s.spawn(move || {
                let r = cni("DEL", i).run();
                assert_eq!(r.code, 0, "DEL {i}: {}", r.stdout);
            });
        }
    });
    assert!(c.allocations().await.is_empty(), "all released (blocks checked for consistency)");
    assert!(c.handles().await.is_empty());
    assert!(node.tabby_links().is_empty());
    assert_eq!(node.tabby_routes(), "");
    let log_text = agent.log_tail();
    assert!(!log_text.contains("\"level\":\"ERROR\""), "{log_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_race_on_a_small_pool() {
    let _serial = serial().await;
    let Some(c) = Cluster::start("two_agents_race_on_a_small_pool").await else { return };
    c.node("node-a");
    c.node("node-b");
    // 64 addresses in 8 blocks of 8; 80 requests.
    c.pool("small", "10.250.0.0/26", 29);
    let a = Agent::start(&c, "node-a", &[]);
    let b = Agent::start(&c, "node-b", &[]);
    type Outcome = (String, Result<Vec<String>, u32>);
    let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..40 {
            for (agent, tag) in [(&a, "a"), (&b, "b")] {
                let outcomes = &outcomes;
                s.spawn(move || {
                    let h = format!("k8s-pod-network.{tag}{i}");
                    let r = agent.add(&h).expect("agent answers");
                    let res = match r.error {
                        None => Ok(r.ips),
                        Some(e) => Err(e.code),
                    };
                    outcomes.lock().unwrap().push((h, res));
                });
            }
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|(_, r)| r.is_ok()).collect();
    let failed: Vec<u32> = outcomes.iter().filter_map(|(_, r)| r.as_ref().err().copied()).collect();
    let allocs = c.allocations().await;
    if ok.len() != 64 {
        eprintln!("agent a:\n{}\nagent b:\n{}", a.log_tail(), b.log_tail());
    }
    assert_eq!(ok.len(), 64, "every address of the pool handed out once: failures {failed:?}\n{ok:?}\n{allocs:?}");
    assert!(failed.iter().all(|c| *c == code::POOL_EXHAUSTED), "the rest see exhaustion: {failed:?}");
    let allocs = c.allocations().await;
    assert_eq!(distinct(&allocs).len(), 64, "no duplicate address");
    for (h, r) in &ok {
        let ips: Vec<String> = r.as_ref().unwrap().iter().map(|s| s.split('/').next().unwrap().to_string()).collect();
        assert_eq!(allocs.get(h), Some(&ips), "{h} recorded as answered");
    }
    // No block has two owners: one block per CIDR, and each confirmed affinity matches its block's owner.
    let blocks = c.blocks().await;
    let cidrs: BTreeSet<&str> = blocks.iter().map(|b| b.spec.cidr.as_str()).collect();
    assert_eq!(cidrs.len(), blocks.len());
    assert_eq!(blocks.len(), 8);
    let owners: BTreeMap<String, String> =
        blocks.iter().map(|b| (b.spec.cidr.clone(), b.spec.affinity.clone().unwrap_or_default())).collect();
    let affinities = Api::<BlockAffinity>::all(c.client()).list(&ListParams::default()).await.unwrap().items;
    let mut per_cidr: BTreeMap<String, usize> = BTreeMap::new();
    for aff in &affinities {
        assert_eq!(aff.spec.state, AffinityState::Confirmed, "{aff:?}");
        assert_eq!(owners.get(&aff.spec.cidr), Some(&format!("host:{}", aff.spec.node)), "{aff:?}");
        *per_cidr.entry(aff.spec.cidr.clone()).or_default() += 1;
    }
    assert!(per_cidr.values().all(|n| *n == 1), "one affinity per block: {per_cidr:?}");
    // Both nodes got blocks.
    let nodes: BTreeSet<&String> = owners.values().collect();
    assert_eq!(nodes.len(), 2, "{owners:?}");

    // Every handle's CHECK reports what it was given, and a repeated ADD returns it (nothing new allocated).
    for (h, r) in &ok {
        let agent = if h.contains(".a") { &a } else { &b };
        let checked = agent.call(Op::Check { handle: h.clone() }).expect("agent answers");
        assert_eq!(&checked.ips, r.as_ref().unwrap(), "CHECK of {h}");
        let again = agent.add(h).expect("agent answers");
        assert_eq!(&again.ips, r.as_ref().unwrap(), "repeated ADD of {h}");
    }
    assert_eq!(distinct(&c.allocations().await).len(), 64, "repeated ADDs allocated nothing new");

    // Borrowing (strictAffinity is false): free three of node-b's addresses; node-a's blocks are full and the
    // pool has no free block, so node-a borrows exactly those. Borrowed addresses are the handle's own for
    // CHECK, a repeated ADD and DEL.
    let freed: Vec<String> = ok.iter().filter(|(h, _)| h.contains(".b")).take(3).map(|(h, _)| h.clone()).collect();
    for h in &freed {
        let r = b.call(Op::Del { handle: h.clone() }).expect("agent answers");
        assert!(r.error.is_none(), "{r:?}");
    }
    let b_blocks: Vec<IpNet> = c
        .blocks()
        .await
        .iter()
        .filter(|b| b.spec.affinity.as_deref() == Some("host:node-b"))
        .map(|b| b.spec.cidr.parse().unwrap())
        .collect();
    for i in 0..3 {
        let h = format!("k8s-pod-network.lent{i}");
        let r = a.add(&h).expect("agent answers");
        assert!(r.error.is_none(), "node-a borrows: {r:?}\n{}", a.log_tail());
        let ip: std::net::IpAddr = r.ips[0].split('/').next().unwrap().parse().unwrap();
        assert!(b_blocks.iter().any(|n| n.contains(&ip)), "{ip} lies in one of node-b's blocks {b_blocks:?}");
        assert_eq!(a.call(Op::Check { handle: h.clone() }).expect("agent answers").ips, r.ips, "CHECK of {h}");
        assert_eq!(a.add(&h).expect("agent answers").ips, r.ips, "repeated ADD of {h}");
        assert!(c.allocations().await.contains_key(&h), "{h} recorded in node-b's block");
        let d = a.call(Op::Del { handle: h.clone() }).expect("agent answers");
        assert_eq!((d.error, d.released), (None, 1), "DEL of {h} releases the borrowed address");
        assert!(!c.allocations().await.contains_key(&h), "{h} released");
    }

    // Release everything through the agent that allocated it (borrowed addresses included).
    for (h, _) in &ok {
        let agent = if h.contains(".a") { &a } else { &b };
        let r = agent.call(Op::Del { handle: h.clone() }).expect("agent answers");
        assert!(r.error.is_none(), "{r:?}");
    }
    assert!(c.allocations().await.is_empty(), "{:?}", c.allocations().await);
    assert!(c.handles().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_one_hundred_adds() {
    let _serial = serial().await;
    let Some(c) = Cluster::start("sigkill_during_one_hundred_adds").await else { return };
    c.node("node-a");
    c.pool("pool-a", "10.244.0.0/16", 26);
    let mut agent = Agent::start(&c, "node-a", &[]);
    let handle = |i: usize, round: usize| format!("k8s-pod-network.kill{i}-{round}");

    let done: Mutex<BTreeMap<usize, Vec<String>>> = Mutex::new(BTreeMap::new());
    let socket = agent.socket.clone();
    std::thread::scope(|s| {
        for i in 0..100 {
            let (done, socket) = (&done, &socket);
            s.spawn(move || {
                let r = tabby_wire::proto::call(
                    socket,
                    Op::Add {
                        handle: handle(i, 0),
                        container_id: format!("kill{i}"),
                        ifname: "eth0".into(),
                        namespace: None,
                        pod: None,
                    },
                    Duration::from_secs(10),
                );
                if let Ok(r) = r
                    && r.error.is_none()
                {
                    done.lock().unwrap().insert(i, r.ips);
                }
            });
        }
        // Kill the agent while the requests are in flight, once a few have been answered.
        let start = std::time::Instant::now();
        while done.lock().unwrap().len() < 5 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        agent.kill9();
    });
    let done = done.into_inner().unwrap();
    eprintln!("{} of 100 ADDs answered before SIGKILL", done.len());
    assert!(done.len() < 100, "the kill came too late to test anything");
    assert!(!done.is_empty(), "the kill came before any answer");

    // Restart and finish as a runtime would: a failed sandbox is retried as a new container.
    agent.restart();
    let mut valid = Vec::new();
    for i in 0..100 {
        let h = if done.contains_key(&i) { handle(i, 0) } else { handle(i, 1) };
        let r = agent.add(&h).expect("agent answers");
        assert!(r.error.is_none(), "{r:?}");
        if let Some(ips) = done.get(&i) {
            assert_eq!(&r.ips, ips, "an answered ADD keeps its address across the restart");
        }
        valid.push(h);
    }
    let allocs = c.allocations().await;
    distinct(&allocs);
    assert!(allocs.len() >= 100);
    // The runtime's GC names the attachments it still has: everything else (allocated for the killed
    // requests but never answered) is released.
    let r =
        agent.call(Op::Gc { network: "k8s-pod-network".into(), valid_handles: valid.clone() }).expect("agent answers");
    assert!(r.error.is_none(), "{r:?}");
    let allocs = c.allocations().await;
    let held: BTreeSet<String> = allocs.keys().cloned().collect();
    assert_eq!(held, valid.iter().cloned().collect::<BTreeSet<_>>(), "no leak after GC");
    assert_eq!(distinct(&allocs).len(), 100);
    let handles: BTreeSet<String> = c.handles().await.into_iter().map(|h| h.spec.handle_id).collect();
    assert_eq!(handles, held, "IPAMHandles match the blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_by_selector_annotation_fixed_address_and_limits() {
    let _serial = serial().await;
    let Some(c) = Cluster::start("pools_by_selector_annotation_fixed_address_and_limits").await else { return };
    c.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {zone: a}}\n");
    // pool-a: this node, tiny blocks; pool-b: another zone only; pool-c: this node, chosen by annotation.
    c.apply(
        "apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {name: pool-a}\nspec: {cidr: '10.244.0.0/24', blockSize: 30}\n---\n\
         apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {name: pool-b}\nspec: {cidr: '10.245.0.0/24', nodeSelector: \"zone == 'b'\"}\n---\n\
         apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {name: pool-c}\nspec: {cidr: '10.246.0.0/24', nodeSelector: \"zone in {'a','c'}\"}\n---\n\
         apiVersion: tabby.dev/v1\nkind: IPAMConfig\nmetadata: {name: default}\nspec: {strictAffinity: true, maxBlocksPerHost: 1}\n",
    );
    c.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: annotated, annotations: {tabby.dev/ipv4pools: '[\"pool-c\"]'}}\n");
    for ns in ["default", "annotated"] {
        c.cp.kubectl_ok(&["create", "serviceaccount", "default", "-n", ns]);
    }
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fixed, namespace: default, annotations: {tabby.dev/ipAddrs: '[\"10.246.0.77\"]'}}\n\
         spec: {nodeName: node-a, containers: [{name: c, image: pause}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: wants-b, namespace: default, annotations: {tabby.dev/ipv4pools: '[\"pool-b\"]'}}\n\
         spec: {nodeName: node-a, containers: [{name: c, image: pause}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: by-ns, namespace: annotated}\n\
         spec: {nodeName: node-a, containers: [{name: c, image: pause}]}\n",
    );
    let a = Agent::start(&c, "node-a", &[]);
    let add = |h: &str, ns: &str, pod: &str| {
        a.call(Op::Add {
            handle: format!("k8s-pod-network.{h}"),
            container_id: h.into(),
            ifname: "eth0".into(),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
        })
        .expect("agent answers")
    };
    let ip = |r: &tabby_wire::proto::Response| r.ips.first().cloned().unwrap_or_default();

    let r = add("fixed", "default", "fixed");
    assert_eq!(ip(&r), "10.246.0.77/26", "fixed address: {r:?}");
    let r = add("by-ns", "annotated", "by-ns");
    assert!(ip(&r).starts_with("10.246.0."), "namespace annotation picks pool-c: {r:?}");
    let r = add("wants-b", "default", "wants-b");
    assert_eq!(r.error.as_ref().map(|e| e.code), Some(code::AGENT), "pool-b is not for this node: {r:?}");
    // No annotation: the eligible pools by name, pool-a first; one /30 block (maxBlocksPerHost 1, strict).
    let mut got = Vec::new();
    for i in 0..4 {
        let r = add(&format!("plain{i}"), "default", &format!("plain{i}"));
        assert!(ip(&r).starts_with("10.244.0."), "{r:?}");
        got.push(ip(&r));
    }
    // pool-a is full and may not grow (maxBlocksPerHost 1, strictAffinity): the next eligible pool serves.
    let r = add("plain4", "default", "plain4");
    assert!(ip(&r).starts_with("10.246.0."), "{r:?}: had {got:?}");
    let blocks = c.blocks().await;
    let in_a = blocks.iter().filter(|b| b.spec.cidr.starts_with("10.244.")).count();
    assert_eq!(in_a, 1, "maxBlocksPerHost");
    assert!(blocks.iter().all(|b| !b.spec.cidr.starts_with("10.245.")), "pool-b untouched");
    let allocs = c.allocations().await;
    distinct(&allocs);
    let fixed = &allocs["k8s-pod-network.fixed"];
    assert_eq!(fixed, &vec!["10.246.0.77".to_string()]);
}
