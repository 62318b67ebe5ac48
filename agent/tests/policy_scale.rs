//! What one change costs at scale (`cargo test -p tabby-agent --release --test policy_scale -- --ignored
//! --nocapture`, root): 1,000 Kubernetes NetworkPolicies, 10,000 pods on 100 nodes (100 on this one),
//! programmed into a real kernel's nftables in a network namespace; then one remote pod relabelled and
//! one policy edited. Prints the compile+render time, the batch sizes and the `nft` apply times, and
//! checks that a label change is set elements only and a policy edit one chain.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use tabby_agent::kernel::nft::{Change, Nft, plan};
use tabby_agent::policy::render::render;
use tabby_api::policy::model::{self, Cluster, Endpoint, compile};
use tabby_testkit::netns::Netns;
use tabby_testkit::skip::require_root;

fn cluster(policies: usize, pods: usize, nodes: usize) -> Cluster {
    let mut c = Cluster { tiers: model::builtin_tiers(), ..Cluster::default() };
    for i in 0..pods {
        let app = format!("app-{}", i % policies);
        let role = format!("client-{}", (i / 7) % policies);
        c.endpoints.push(Endpoint {
            namespace: "bench".into(),
            name: format!("pod-{i}"),
            node: format!("node-{}", i % nodes),
            labels: [("app".to_string(), app), ("role".to_string(), role)].into(),
            service_account: Some("default".into()),
            ips: vec![format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256).parse().unwrap()],
            ports: vec![],
        });
    }
    c.namespaces = [("bench".to_string(), BTreeMap::new())].into();
    for p in 0..policies {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("np-{p}"), "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"app": format!("app-{p}")}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client-{p}")}}}],
                                  "ports": [{"port": 80}]}]}}))
        .unwrap();
        c.policies.push(model::from_kubernetes(&np).unwrap());
    }
    c
}

fn rendered(c: &Cluster) -> tabby_agent::policy::render::Rendered {
    let rs = compile(c, |e| e.node == "node-0");
    let ifaces =
        c.endpoints.iter().filter(|e| e.node == "node-0").map(|e| (e.key(), tabby_agent::policy::iface(e))).collect();
    render(&rs, &ifaces)
}

#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn one_change_at_scale() {
    if !require_root("policy_scale") {
        return;
    }
    let ns = Netns::new("pscale");
    let c = cluster(1000, 10_000, 100);
    let t = Instant::now();
    let r = rendered(&c);
    let full = t.elapsed();
    println!(
        "compile + render, 1000 policies, 10000 pods (100 local): {:?}; {} chains, {} sets",
        full,
        r.chains.len(),
        r.sets.len()
    );
    let result = ns.run(move || {
        let nft = Arc::new(Mutex::new(Nft::default()));
        let mut n = nft.lock().unwrap();
        n.stage(r.section());
        let t = Instant::now();
        let changes = n.commit().expect("first commit");
        println!("first program: {changes} changes in {:?}", t.elapsed());

        // A remote pod relabelled: its address joins another selector's set.
        let mut relabelled = c.clone();
        // pod-8 runs on node-8 as role client-1; client-0 is a peer of a policy of this node's pods.
        let e = relabelled.endpoints.iter_mut().find(|e| e.name == "pod-8").unwrap();
        e.labels.insert("role".into(), "client-0".into());
        let t = Instant::now();
        let r2 = rendered(&relabelled);
        let compute = t.elapsed();
        let batch = plan(Some(&tabby_agent::kernel::nft::after(None, &[r.section()])), &[r2.section()]);
        assert!(
            !batch.is_empty()
                && batch.0.iter().all(|ch| matches!(ch, Change::AddElements(..) | Change::DeleteElements(..))),
            "{}",
            batch.render()
        );
        n.stage(r2.section());
        let t = Instant::now();
        let changes = n.commit().expect("label change");
        println!(
            "one label change: compute {compute:?}, {changes} changes ({} lines), nft apply {:?}",
            batch.render().lines().count(),
            t.elapsed()
        );

        // One policy edited: its chain only.
        let mut edited = relabelled.clone();
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "np-0", "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"app": "app-0"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client-0"}}}], "ports": [{"port": 8080}]}]}}))
        .unwrap();
        edited.policies[0] = model::from_kubernetes(&np).unwrap();
        let t = Instant::now();
        let r3 = rendered(&edited);
        let compute = t.elapsed();
        n.stage(r3.section());
        let t = Instant::now();
        let changes = n.commit().expect("policy edit");
        println!("one policy edit: compute {compute:?}, {changes} changes, nft apply {:?}", t.elapsed());
        assert!(changes <= 3, "flush + the policy's rules: {changes}");
        changes
    });
    assert!(result > 0);
}
