//! The leader-elected IPAM garbage collector against a real control plane: leaks of pods that never
//! existed and of a deleted node released, empty blocks and affinities of the deleted node and orphan
//! handles deleted, each kind listed over several pages.

use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use tabby_api::ipam::BlockAffinity;
use tabby_testkit::cluster::*;
use tabby_wire::proto::Op;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_elected_gc_releases_leaks_and_deleted_nodes() {
    let _serial = serial().await;
    let Some(c) = Cluster::start("leader_elected_gc_releases_leaks_and_deleted_nodes").await else { return };
    c.node("node-a");
    c.node("node-b");
    c.pool("pool-a", "10.244.0.0/16", 26);
    c.cp.kubectl_ok(&["create", "serviceaccount", "default", "-n", "default"]);
    c.pod("default", "alive", "node-a");
    // node-b claims a block and allocates for a pod that never existed, then goes away with its node.
    let mut b = Agent::start(&c, "node-b", &[("TABBY_IPAM_GC", "Disabled")]);
    let r = b
        .call(Op::Add {
            handle: "k8s-pod-network.onb".into(),
            container_id: "onb".into(),
            ifname: "eth0".into(),
            namespace: Some("default".into()),
            pod: Some("gone-b".into()),
        })
        .expect("agent answers");
    assert!(r.error.is_none(), "{r:?}");
    b.kill9();
    c.cp.kubectl_ok(&["delete", "node", "node-b"]);

    // Enough objects that a pass lists each kind over several pages: pods listed before `alive`, handles
    // no block refers to, and empty blocks of the deleted node.
    let mut docs = String::new();
    for i in 0..120 {
        docs += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a-{i:03}, namespace: default}}\nspec: {{nodeName: node-a, containers: [{{name: c, image: pause}}]}}\n"
        );
    }
    for i in 0..250 {
        docs += &format!(
            "---\napiVersion: tabby.dev/v1\nkind: IPAMHandle\nmetadata: {{name: orphan-{i:03}}}\nspec: {{handleID: orphan-{i:03}}}\n"
        );
    }
    for i in 0..25 {
        let unallocated: Vec<String> = (0..64).map(|o| o.to_string()).collect();
        docs += &format!(
            "---\napiVersion: tabby.dev/v1\nkind: IPAMBlock\nmetadata: {{name: 10-250-{i}-0-26}}\nspec: {{cidr: 10.250.{i}.0/26, affinity: 'host:node-b', allocations: [{}], unallocated: [{}]}}\n",
            vec!["null"; 64].join(", "),
            unallocated.join(", ")
        );
    }
    c.apply(&docs);

    // node-a: one allocation for a live pod, one for a pod that does not exist. Zero grace, 1 s passes.
    let a =
        Agent::start(&c, "node-a", &[("TABBY_IPAM_LEAK_GRACE_SECONDS", "0"), ("TABBY_IPAM_GC_INTERVAL_SECONDS", "1")]);
    for (h, pod) in [("k8s-pod-network.alive", "alive"), ("k8s-pod-network.leaked", "never-there")] {
        let r = a
            .call(Op::Add {
                handle: h.into(),
                container_id: h.into(),
                ifname: "eth0".into(),
                namespace: Some("default".into()),
                pod: Some(pod.into()),
            })
            .expect("agent answers");
        assert!(r.error.is_none(), "{r:?}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let allocs = c.allocations().await;
        let blocks = c.blocks().await;
        let b_blocks = blocks.iter().filter(|b| b.spec.affinity.as_deref() == Some("host:node-b")).count();
        let affinities = Api::<BlockAffinity>::all(c.client()).list(&ListParams::default()).await.unwrap().items;
        let b_affinities = affinities.iter().filter(|x| x.spec.node == "node-b").count();
        let handles: Vec<String> = c.handles().await.into_iter().map(|h| h.spec.handle_id).collect();
        // Handles go one pass after their last address (a pass reads the blocks once, at its start).
        if allocs.keys().collect::<Vec<_>>() == vec!["k8s-pod-network.alive"]
            && handles == vec!["k8s-pod-network.alive".to_string()]
            && b_blocks == 0
            && b_affinities == 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GC did not converge: {allocs:?}, handles {handles:?}, node-b blocks {b_blocks}, affinities {b_affinities}\n{}",
            a.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One pass saw every page: the orphan handles and the empty blocks went together, in the pass after
    // the one that first saw them (a pass that read only a first page would take several).
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    let most = |field: &str| {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v[field].as_u64())
            .max()
            .unwrap_or(0)
    };
    assert!(most("handles_deleted") >= 250, "one pass deletes every orphan handle:\n{}", a.log_tail());
    assert!(most("blocks_deleted") >= 25, "one pass deletes every empty block of node-b:\n{}", a.log_tail());
    let lease = c.cp.kubectl_ok(&[
        "get",
        "lease",
        "-n",
        "tabby-system",
        "tabby-ipam-gc",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "node-a");
}
