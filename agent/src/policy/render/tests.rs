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
    let after = [rendered(&relabelled).section()];
    let b = plan(Some(&before), &after);
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

/// One endpoint under `actions.len()` policies of tier `security` (Deny at its end), in that order: each
/// policy has one ingress rule matching everything with that action (`None`: no rule), staged when
/// `true`.
fn under(actions: &[(Option<Action>, bool)]) -> Cluster {
    let mut tiers = model::builtin_tiers();
    tiers.insert("security".into(), TierInfo { order: Some(100.0), default_action: Action::Deny });
    let policies = actions
        .iter()
        .enumerate()
        .map(|(i, (action, staged))| {
            let ingress: Vec<serde_json::Value> = action.iter().map(|a| json!({"action": format!("{a:?}")})).collect();
            let spec =
                json!({"tier": "security", "order": i, "selector": "all()", "types": ["Ingress"], "ingress": ingress});
            let name = format!("p{i:04}");
            if *staged {
                let s: StagedGlobalNetworkPolicySpec = serde_json::from_value(spec).unwrap();
                model::from_tabby(Kind::StagedGlobal, None, &name, &s.fields).unwrap()
            } else {
                let s: GlobalNetworkPolicySpec = serde_json::from_value(spec).unwrap();
                model::from_tabby(Kind::Global, None, &name, &s.fields).unwrap()
            }
        })
        .collect();
    Cluster {
        endpoints: vec![ep("shop", "web-0", "10.1.0.1", "n1", &[("app", "web")])],
        namespaces: [("shop".to_string(), BTreeMap::new())].into(),
        tiers,
        policies,
        ..Cluster::default()
    }
}

/// Runs a packet through the ingress chains of `r`'s one endpoint the way the kernel does, for the
/// rules policy writes when every policy rule matches everything: whether it is accepted, the deepest
/// chain it reached (the kernel allows 16 levels of jumps), and how many rules it met (what a new
/// connection costs: each rule is a few expressions the kernel evaluates).
fn ingress_walk(r: &Rendered) -> (bool, usize, usize) {
    #[derive(PartialEq)]
    enum Out {
        Return,
        Drop,
    }
    fn run(r: &Rendered, chain: &str, mark: &mut u32, depth: usize, deepest: &mut usize, met: &mut usize) -> Out {
        *deepest = (*deepest).max(depth);
        let c = r.chains.iter().find(|c| c.name == chain).unwrap_or_else(|| panic!("no chain {chain}"));
        for rule in &c.rules {
            *met += 1;
            let (cond, rest) = if let Some(rest) = rule.strip_prefix(&format!("meta mark & {:#x} == 0 ", ACCEPT | PASS))
            {
                (*mark & (ACCEPT | PASS) == 0, rest)
            } else if let Some(rest) = rule.strip_prefix(&format!("meta mark & {ACCEPT:#x} != 0 ")) {
                (*mark & ACCEPT != 0, rest)
            } else if let Some(rest) = rule.strip_prefix(&format!("meta mark & {:#x} == 0 ", PASS | STAGED)) {
                (*mark & (PASS | STAGED) == 0, rest)
            } else {
                (true, rule.as_str())
            };
            if !cond {
                continue;
            }
            let rest = rest.strip_prefix("counter").map_or(rest, str::trim_start);
            let rest = match rest.strip_prefix(CLEAR) {
                Some(more) => {
                    *mark &= 0xfff8_ffff;
                    more.trim_start()
                }
                None => rest,
            };
            if let Some(to) = rest.strip_prefix("jump ") {
                if run(r, to, mark, depth + 1, deepest, met) == Out::Drop {
                    return Out::Drop;
                }
            } else if let Some(bit) = rest.strip_prefix("meta mark set meta mark | ") {
                *mark |= u32::from_str_radix(bit.trim_end_matches(" return").trim_start_matches("0x"), 16).unwrap();
                return Out::Return;
            } else if rest == "return" {
                return Out::Return;
            } else if rest == "drop" {
                return Out::Drop;
            } else if !(rest.is_empty() || rest.starts_with("log ")) {
                panic!("a rule this walk does not know: {rule}");
            }
        }
        Out::Return
    }
    let map = r.sets.iter().find(|s| s.name == "p-to-wl-map").unwrap();
    let element = map.elements.iter().next().expect("the endpoint's interface").as_str().to_string();
    let chain = element.split("goto ").nth(1).unwrap();
    let (mut mark, mut deepest, mut met) = (0, 0, 0);
    (run(r, chain, &mut mark, 1, &mut deepest, &mut met) == Out::Return, deepest, met)
}

fn ingress_verdict(r: &Rendered) -> (bool, usize) {
    let (accepted, deepest, _) = ingress_walk(r);
    (accepted, deepest)
}

/// What the tier means: the first enforced policy that allows, denies or passes decides; Log goes on;
/// staged policies only count; no decision at the end of a tier with an enforced policy: denied.
fn expected(actions: &[(Option<Action>, bool)]) -> bool {
    for (a, staged) in actions {
        match (a, staged) {
            (_, true) | (None | Some(Action::Log), _) => {}
            (Some(Action::Allow | Action::Pass), false) => return true,
            (Some(Action::Deny), false) => return false,
        }
    }
    actions.iter().all(|(_, staged)| *staged)
}

#[test]
fn long_tiers_are_cut_into_chunks_that_mean_what_one_chain_does() {
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for case in 0..40 {
        let len = [0, 1, 31, 32, 33, 64, 150, 400][case % 8] as usize;
        let actions: Vec<(Option<Action>, bool)> = (0..len)
            .map(|_| {
                // Mostly policies that do not decide, so decisions land deep in the tier.
                let a = match next(40) {
                    0 => Some(Action::Allow),
                    1 => Some(Action::Deny),
                    2 => Some(Action::Pass),
                    3..=9 => Some(Action::Log),
                    _ => None,
                };
                (a, next(10) == 0)
            })
            .collect();
        let c = under(&actions);
        let r = rendered(&c);
        let (accepted, deepest) = ingress_verdict(&r);
        assert_eq!(accepted, expected(&actions), "case {case}: {len} policies {actions:?}");
        // Endpoint, tier, at most two levels of chunks at 400, the policy.
        assert!(deepest <= 5, "case {case}: {deepest} levels");
        for ch in r.chains.iter().filter(|ch| ch.name.starts_with("p-t")) {
            assert!(ch.rules.len() <= 2 * FLAT + 1, "{} has {} rules", ch.name, ch.rules.len());
        }
        let chunked = r.chains.iter().any(|ch| ch.name.starts_with("p-ci-"));
        assert_eq!(chunked, len > FLAT, "case {case}: chunks only past {FLAT} policies");
    }
}

#[test]
fn rules_a_new_connection_meets_under_a_thousand_policies() {
    // None of the 1,000 decides (the tier's end drops), or the last one allows, or the first one does.
    let none = vec![(None, false); 1000];
    let mut last = none.clone();
    last[999] = (Some(Action::Allow), false);
    let mut first = none.clone();
    first[0] = (Some(Action::Allow), false);
    for (what, actions, accepted) in
        [("refused", &none, false), ("allowed by the last", &last, true), ("allowed by the first", &first, true)]
    {
        let (ok, _, met) = ingress_walk(&rendered(&under(actions)));
        assert_eq!(ok, accepted, "{what}");
        println!("{what}: {met} rules");
        // One rule per policy that does not decide, and the chunks' calls (2,141 when every call was
        // followed by a check of its own); an early Allow skips the rest of its chunk, at most 64.
        let most = if what == "allowed by the first" { 100 } else { 1_200 };
        assert!(met < most, "{what}: {met} rules met under 1,000 policies");
    }
}

#[test]
fn a_policy_created_or_deleted_under_a_thousand_rewrites_its_chunk_not_the_tier() {
    let actions: Vec<(Option<Action>, bool)> = (0..1000).map(|_| (Some(Action::Log), false)).collect();
    let c = under(&actions);
    let before = after(None, &[rendered(&c).section()]);
    for at in [0, 1, 500, 998, 999] {
        // A policy created between two others (same order, a name sorting after the one there).
        let mut created = c.clone();
        let mut extra = under(&[(Some(Action::Deny), false)]).policies.remove(0);
        extra.id.name = format!("p{at:04}x");
        extra.order = Some(at as f64);
        created.policies.push(extra);
        let after = [rendered(&created).section()];
        let b = plan(Some(&before), &after);
        assert!(b.0.len() < 150, "a policy created at {at}: {} changes\n{}", b.0.len(), b.render());
        assert!(!ingress_verdict(&rendered(&created)).0, "the new Deny decides");
        // And deleted.
        let mut deleted = c.clone();
        deleted.policies.remove(at);
        let after = [rendered(&deleted).section()];
        let b = plan(Some(&before), &after);
        assert!(b.0.len() < 150, "a policy deleted at {at}: {} changes\n{}", b.0.len(), b.render());
    }
}
