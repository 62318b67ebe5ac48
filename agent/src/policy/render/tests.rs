//! The render against a golden batch: what a fresh table gets for a small cluster (two local pods, a
//! remote one; a Kubernetes policy with a named port, a tiered GlobalNetworkPolicy with Log and Pass, a
//! staged default-deny), and what one label change or one policy edit sends afterwards.
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p tabby-agent --lib render`.

use std::collections::BTreeMap;

use serde_json::json;
use tabby_api::policy::model::{self, Cluster, Endpoint, Kind, NamedPort, TierInfo, compile};
use tabby_api::policy::{Action, GlobalNetworkPolicySpec, StagedGlobalNetworkPolicySpec};

use super::*;
use crate::kernel::nft::{after, plan};

fn ep(ns: &str, name: &str, ip: &str, node: &str, labels: &[(&str, &str)]) -> std::sync::Arc<Endpoint> {
    std::sync::Arc::new(Endpoint {
        namespace: ns.into(),
        name: name.into(),
        node: node.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        service_account: Some("default".into()),
        ips: ip.split(',').map(|i| i.parse().unwrap()).collect(),
        ports: vec![NamedPort { name: "http".into(), protocol: model::TCP, port: 8080 }],
        ..Endpoint::default()
    })
}

fn cluster() -> Cluster {
    let k8s: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "lb"}}}], "ports": [{"port": "http"}]},
                             {"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.7/32"]}}],
                              "ports": [{"protocol": "SCTP", "port": 9000, "endPort": 9010}]}]}}))
    .unwrap();
    let gnp: GlobalNetworkPolicySpec = serde_json::from_value(json!({"tier": "security", "order": 10,
        "selector": "all()", "types": ["Ingress", "Egress"],
        "ingress": [{"action": "Log", "protocol": "TCP", "destination": {"ports": [22]}},
                    {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}},
                    {"action": "Pass"}],
        "egress": [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}, {"action": "Pass"}]}))
    .unwrap();
    let staged: StagedGlobalNetworkPolicySpec =
        serde_json::from_value(json!({"selector": "app == 'lb'", "types": ["Egress"]})).unwrap();
    let mut tiers = model::builtin_tiers();
    tiers.insert("security".into(), TierInfo { order: Some(100.0), default_action: Action::Deny });
    Cluster {
        endpoints: vec![
            ep("shop", "web-0", "10.1.0.1,fd00::1", "n1", &[("app", "web")]),
            ep("shop", "lb-0", "10.1.0.2", "n1", &[("app", "lb")]),
            ep("shop", "lb-1", "10.1.1.2", "n2", &[("app", "lb")]),
        ],
        namespaces: [("shop".to_string(), BTreeMap::new())].into(),
        tiers,
        policies: vec![
            model::from_kubernetes(&k8s).unwrap(),
            model::from_tabby(Kind::Global, None, "guard", &gnp.fields).unwrap(),
            model::from_tabby(Kind::StagedGlobal, None, "preview", &staged.fields).unwrap(),
        ],
        ..Cluster::default()
    }
}

fn rendered(c: &Cluster) -> Rendered {
    let rs = compile(c, |e| e.node == "n1");
    let ifaces = c.endpoints.iter().filter(|e| e.node == "n1").map(|e| (e.key(), super::super::iface(e))).collect();
    render(&rs, &ifaces)
}

#[test]
fn golden_batch_for_a_fresh_table() {
    let r = rendered(&cluster());
    let batch = plan(None, &[r.section()]).render();
    let path = format!("{}/src/policy/render/golden.nft", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &batch).unwrap();
    }
    let golden = std::fs::read_to_string(&path).expect("golden.nft: run with UPDATE_GOLDEN=1");
    assert!(golden == batch, "the batch differs from {path}; if intended, UPDATE_GOLDEN=1\n{batch}");
    // Every counted rule says what it stands for.
    assert!(r.attribution.values().any(|a| a.action == "tier-deny" && a.tier == "default"));
    assert!(r.attribution.values().any(|a| a.action == "log" && a.policy == "gnp:guard" && a.rule == Some(0)));
    assert!(r.attribution.values().any(|a| a.staged && a.policy.is_empty()), "the staged tier's would-drop");
}

#[test]
fn a_label_change_moves_elements_and_a_policy_edit_refills_one_chain() {
    let c = cluster();
    let before = after(None, &[rendered(&c).section()]);
    // A remote pod becomes a load balancer: only set elements change.
    let mut relabelled = c.clone();
    relabelled.endpoints.push(ep("shop", "lb-2", "10.1.1.3", "n2", &[("app", "lb")]));
    let b = plan(Some(&before), &[rendered(&relabelled).section()]);
    assert!(b.0.iter().all(|ch| matches!(ch, crate::kernel::nft::Change::AddElements(..))), "{}", b.render());
    assert_eq!(b.0.len(), 2, "the selector set and the named-port set: {}", b.render());
    // An edit of one policy refills its chain only.
    let mut edited = c.clone();
    let gnp: GlobalNetworkPolicySpec = serde_json::from_value(json!({"tier": "security", "order": 10,
        "selector": "all()", "types": ["Ingress", "Egress"],
        "ingress": [{"action": "Deny", "protocol": "TCP", "destination": {"ports": [23]}}, {"action": "Pass"}],
        "egress": [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}, {"action": "Pass"}]}))
    .unwrap();
    edited.policies[1] = model::from_tabby(Kind::Global, None, "guard", &gnp.fields).unwrap();
    let text = plan(Some(&before), &[rendered(&edited).section()]).render();
    let chain = policy_chain(&edited.policies[1].id, Dir::Ingress);
    assert!(text.starts_with(&format!("flush chain inet tabby {chain}\n")), "{text}");
    assert!(text.lines().skip(1).all(|l| l.starts_with(&format!("add rule inet tabby {chain} "))), "{text}");
    // Nothing changed: nothing sent.
    assert!(plan(Some(&before), &[rendered(&c).section()]).is_empty());
}

#[test]
fn families_protocols_and_ports() {
    let r = model::CRule {
        action: Action::Allow,
        origin: 0,
        name: None,
        ip_version: None,
        protocol: Some(model::SCTP),
        not_protocol: None,
        icmp: None,
        not_icmp: None,
        src: model::CMatch { nets: vec!["10.0.0.0/8".parse().unwrap()], ..Default::default() },
        dst: model::CMatch { ports: vec![(80, 80), (90, 99)], ..Default::default() },
    };
    assert_eq!(rule_match(&r, false).unwrap(), "meta l4proto sctp ip saddr { 10.0.0.0/8 } th dport { 80, 90-99 }");
    assert_eq!(rule_match(&r, true), None, "IPv4 networks only: no IPv6 rule");
    let icmp = model::CRule {
        protocol: Some(model::ICMP),
        icmp: Some((8, None)),
        src: Default::default(),
        dst: Default::default(),
        ..r
    };
    assert_eq!(rule_match(&icmp, false).unwrap(), "meta l4proto 1 icmp type 8");
    assert_eq!(rule_match(&icmp, true), None);
}
