//! The model against a small cluster: namespaces x (team=a) and y (team=b), pods x/a, x/b, y/a
//! (labelled `pod=<name>`, serving a named port), a network set, and one table of packets per
//! scenario with the verdict and what decides it.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::policy::{GlobalNetworkPolicySpec, NetworkPolicySpec, StagedGlobalNetworkPolicySpec};

fn ep(ns: &str, name: &str, ip: &str, node: &str) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        name: name.into(),
        node: node.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        service_account: Some("default".into()),
        sa_labels: Labels::new(),
        ips: vec![ip.parse().unwrap()],
        ports: vec![
            NamedPort { name: "serve-80-tcp".into(), protocol: TCP, port: 80 },
            NamedPort { name: "serve-81-udp".into(), protocol: UDP, port: 81 },
        ],
    }
}

fn cluster() -> Cluster {
    Cluster {
        endpoints: vec![
            ep("x", "a", "10.0.0.1", "n1").into(),
            ep("x", "b", "10.0.0.2", "n1").into(),
            ep("y", "a", "10.0.1.1", "n2").into(),
            Endpoint { ips: vec!["fd00::5".parse().unwrap()], ..ep("y", "v6", "10.0.1.9", "n2") }.into(),
        ],
        namespaces: [
            ("x".to_string(), [("team".to_string(), "a".to_string())].into()),
            ("y".to_string(), [("team".to_string(), "b".to_string())].into()),
        ]
        .into(),
        net_sets: vec![NetSet {
            namespace: None,
            name: "internet".into(),
            labels: [("role".to_string(), "internet".to_string())].into(),
            nets: vec!["203.0.113.0/24".parse().unwrap()],
        }],
        nodes: vec![NodeInfo {
            name: "n1".into(),
            labels: [("zone".to_string(), "z1".to_string())].into(),
            ips: vec!["192.168.1.1".parse().unwrap()],
        }],
        ..Cluster::default()
    }
}

fn knp(v: serde_json::Value) -> Policy {
    let np: k8s::NetworkPolicy = serde_json::from_value(v).unwrap();
    from_kubernetes(&np).unwrap()
}

fn gnp(name: &str, v: serde_json::Value) -> Policy {
    let s: GlobalNetworkPolicySpec = serde_json::from_value(v).unwrap();
    from_tabby(Kind::Global, None, name, &s.fields).unwrap()
}

fn np(ns: &str, name: &str, v: serde_json::Value) -> Policy {
    let s: NetworkPolicySpec = serde_json::from_value(v).unwrap();
    from_tabby(Kind::Namespaced, Some(ns), name, &s.fields).unwrap()
}

fn cnp(v: serde_json::Value) -> Policy {
    let c: ClusterNetworkPolicy = serde_json::from_value(v).unwrap();
    from_cnp(&c).unwrap()
}

fn pkt(src: &str, dst: &str, proto: u8, port: u16) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: proto,
        src_port: 40000,
        dst_port: port,
        icmp: None,
    }
}

/// The whole path: egress of the source endpoint (if it is one), then ingress of the destination.
fn allowed(c: &Cluster, rs: &Ruleset, p: &Packet) -> bool {
    let by_ip = |ip: IpAddr| c.endpoints.iter().find(|e| e.ips.contains(&ip)).map(|e| e.key());
    let empty = (vec![], vec![]);
    let e = by_ip(p.src).map(|k| rs.decide(&rs.endpoints.get(&k).unwrap_or(&empty).1, Dir::Egress, p).allowed);
    let i = by_ip(p.dst).map(|k| rs.decide(&rs.endpoints.get(&k).unwrap_or(&empty).0, Dir::Ingress, p).allowed);
    e.unwrap_or(true) && i.unwrap_or(true)
}

fn check(policies: Vec<Policy>, table: &[(&str, &str, u8, u16, bool)]) -> (Cluster, Ruleset) {
    let mut c = cluster();
    c.policies = policies;
    let rs = compile(&c, |_| true);
    for (src, dst, proto, port, want) in table {
        assert_eq!(allowed(&c, &rs, &pkt(src, dst, *proto, *port)), *want, "{src} -> {dst} {proto}/{port}");
    }
    (c, rs)
}

const XA: &str = "10.0.0.1";
const XB: &str = "10.0.0.2";
const YA: &str = "10.0.1.1";
const OUT: &str = "203.0.113.7";

#[test]
fn no_policy_allows_everything() {
    check(vec![], &[(XA, XB, TCP, 80, true), (YA, XA, UDP, 81, true), (OUT, XA, TCP, 1, true)]);
}

#[test]
fn kubernetes_default_deny_and_allow_from_pods_and_namespaces() {
    let deny = knp(json!({"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}));
    check(vec![deny.clone()], &[(XB, XA, TCP, 80, false), (XA, YA, TCP, 80, true), (OUT, XA, TCP, 80, false)]);
    // policyTypes defaulted by us when the list is empty: Ingress only (egress: [] does not isolate).
    let empty_types = knp(json!({"metadata": {"name": "e", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": [], "egress": []}}));
    check(vec![empty_types], &[(XA, YA, TCP, 80, true), (YA, XA, TCP, 80, false)]);
    let from_pod_b = knp(json!({"metadata": {"name": "b", "namespace": "x"}, "spec": {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}));
    // pod=b in x only: y/a has no pod=b; a podSelector alone is the policy's namespace.
    check(vec![deny.clone(), from_pod_b], &[(XB, XA, TCP, 80, true), (YA, XA, TCP, 80, false)]);
    let from_team_b = knp(json!({"metadata": {"name": "nsb", "namespace": "x"}, "spec": {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}}));
    check(vec![from_team_b], &[(YA, XA, TCP, 80, true), (XB, XA, TCP, 80, false)]);
    // Both in one peer: AND.
    let and = knp(json!({"metadata": {"name": "and", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]}]},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}]}}));
    check(vec![and], &[(YA, XA, TCP, 80, false), (XB, XA, TCP, 80, false)]);
}

#[test]
fn kubernetes_ports_protocols_and_ip_blocks() {
    let udp_only = knp(json!({"metadata": {"name": "u", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"ports": [{"protocol": "UDP", "port": 81}]}]}}));
    check(vec![udp_only], &[(YA, XA, UDP, 81, true), (YA, XA, TCP, 81, false), (YA, XA, SCTP, 81, false)]);
    let sctp_only = knp(json!({"metadata": {"name": "s", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}}));
    check(vec![sctp_only], &[(YA, XA, SCTP, 80, true), (YA, XA, TCP, 80, false)]);
    let range = knp(json!({"metadata": {"name": "r", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"ports": [{"port": 80, "endPort": 90}]}]}}));
    check(vec![range], &[(YA, XA, TCP, 85, true), (YA, XA, TCP, 91, false), (YA, XA, TCP, 79, false)]);
    // A named port, resolved on the destination pod (TCP by default, so the UDP-named port never opens).
    let named = knp(json!({"metadata": {"name": "n", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"ports": [{"port": "serve-80-tcp"}, {"port": "serve-81-udp"}]}]}}));
    check(vec![named], &[(YA, XA, TCP, 80, true), (YA, XA, TCP, 81, false), (YA, XA, UDP, 80, false)]);
    // Egress to a named port on the peer pods.
    let egress_named = knp(json!({"metadata": {"name": "en", "namespace": "x"}, "spec": {"podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-80-tcp"}]}]}}));
    check(vec![egress_named], &[(XA, YA, TCP, 80, true), (XA, YA, TCP, 81, false), (XA, OUT, TCP, 80, false)]);
    // ipBlock matches pod addresses; except carves out.
    let block = knp(json!({"metadata": {"name": "ip", "namespace": "x"}, "spec": {"podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}]}]}}));
    check(vec![block.clone()], &[(XA, XB, TCP, 80, true), (XA, YA, TCP, 80, false), (XA, OUT, TCP, 80, false)]);
    // Union: a second policy re-allows the excepted address.
    let again = knp(json!({"metadata": {"name": "ip2", "namespace": "x"}, "spec": {"podSelector": {},
        "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.1/32"}}]}]}}));
    check(vec![block, again], &[(XA, YA, TCP, 80, true)]);
}

#[test]
fn tiers_order_pass_log_and_deny() {
    let allow_all = knp(json!({"metadata": {"name": "all", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{}]}}));
    // A security tier before default denies y → x on port 80, passes the rest.
    let mut c = cluster();
    c.tiers = builtin_tiers();
    c.tiers.insert("security".into(), TierInfo { order: Some(100.0), default_action: Action::Deny });
    let sec = gnp(
        "sec",
        json!({"tier": "security", "order": 10, "selector": "projectcalico.org/namespace == 'x'",
        "ingress": [
            {"action": "Log", "protocol": "TCP", "destination": {"ports": [80]}},
            {"action": "Deny", "protocol": "TCP", "source": {"namespaceSelector": "team == 'b'"}, "destination": {"ports": [80]}},
            {"action": "Pass"}]}),
    );
    c.policies = vec![allow_all.clone(), sec];
    let rs = compile(&c, |_| true);
    let prog = &rs.endpoints["x/a"].0;
    assert_eq!(prog.iter().map(|t| t.tier.as_str()).collect::<Vec<_>>(), vec!["security", "default"]);
    let v = rs.decide(prog, Dir::Ingress, &pkt(YA, XA, TCP, 80));
    assert!(!v.allowed);
    assert_eq!(v.logged.len(), 1, "Log does not decide");
    assert!(matches!(&v.decider, Decider::Rule { tier, rule: 1, action: Action::Deny, .. } if tier == "security"));
    let v = rs.decide(prog, Dir::Ingress, &pkt(XB, XA, TCP, 80));
    assert!(v.allowed, "passed to default, where the Kubernetes policy allows");
    assert!(
        matches!(&v.decider, Decider::Rule { tier, policy, .. } if tier == "default" && policy.kind == Kind::Kubernetes)
    );
    // Order inside a tier: a Tabby policy at order 500 comes before Kubernetes' 1000.
    let deny_udp = np("x", "no-udp", json!({"order": 500, "ingress": [{"action": "Deny", "protocol": "UDP"}]}));
    check(vec![allow_all.clone(), deny_udp], &[(YA, XA, UDP, 81, false), (YA, XA, TCP, 80, true)]);
    // A tier with defaultAction Pass lets unmatched traffic through to the next tier.
    let mut c = cluster();
    c.tiers.insert("soft".into(), TierInfo { order: Some(1.0), default_action: Action::Pass });
    c.policies = vec![gnp("s", json!({"tier": "soft", "ingress": [{"action": "Deny", "protocol": "UDP"}]}))];
    let rs = compile(&c, |_| true);
    assert!(allowed(&c, &rs, &pkt(YA, XA, TCP, 80)));
    assert!(!allowed(&c, &rs, &pkt(YA, XA, UDP, 80)));
}

#[test]
fn tabby_rules_match_every_field() {
    // nets/notNets, selector/notSelector, ports/notPorts, notProtocol, a global network set.
    let p = gnp(
        "g",
        json!({"selector": "pod == 'a'", "types": ["Egress"], "egress": [
        {"action": "Allow", "protocol": "TCP", "destination": {"selector": "role == 'internet'", "namespaceSelector": "global()", "notPorts": [22]}},
        {"action": "Allow", "destination": {"nets": ["10.0.0.0/8"], "notNets": ["10.0.1.0/24"]}, "notProtocol": "UDP"},
        {"action": "Allow", "protocol": "UDP", "destination": {"selector": "all()", "notSelector": "pod == 'b'", "ports": ["80:81"]}}]}),
    );
    check(
        vec![p],
        &[
            (XA, OUT, TCP, 443, true),
            (XA, OUT, TCP, 22, false),
            (XA, XB, TCP, 1, true),
            (XA, YA, TCP, 1, false),
            (XA, XB, UDP, 81, false),
            (XA, YA, UDP, 81, true),
            (XA, YA, UDP, 82, false),
            (XB, YA, UDP, 82, true),
        ],
    );
}

#[test]
fn cluster_network_policy_tiers_around_kubernetes_policy() {
    let allow_all =
        knp(json!({"metadata": {"name": "all", "namespace": "x"}, "spec": {"podSelector": {}, "ingress": [{}]}}));
    let admin_deny = cnp(json!({"metadata": {"name": "a"}, "spec": {"tier": "Admin", "priority": 1,
        "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
        "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "b"}}}],
                     "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                    {"action": "Pass", "from": [{"namespaces": {}}], "protocols": [{"udp": {}}]}]}}));
    let baseline_deny = cnp(json!({"metadata": {"name": "b"}, "spec": {"tier": "Baseline", "priority": 1,
        "subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}));
    // Admin Deny beats the NetworkPolicy's allow; Pass and unmatched go on to it.
    check(
        vec![allow_all.clone(), admin_deny.clone()],
        &[(YA, XA, TCP, 80, false), (YA, XA, TCP, 81, true), (YA, XA, UDP, 80, true)],
    );
    // Baseline only where no NetworkPolicy decided: y has none, x has one.
    check(vec![allow_all, baseline_deny.clone()], &[(XA, YA, TCP, 80, false), (YA, XA, TCP, 80, true)]);
    // Egress to networks, and a domainNames Accept that fails closed.
    let eg = cnp(json!({"metadata": {"name": "e"}, "spec": {"tier": "Admin", "priority": 5,
        "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}},
        "egress": [{"action": "Accept", "to": [{"domainNames": ["example.com"]}]},
                   {"action": "Deny", "to": [{"networks": ["203.0.113.0/24"]}]},
                   {"action": "Deny", "to": [{"nodes": {"matchLabels": {"zone": "z1"}}}]}]}}));
    check(vec![eg], &[(XA, OUT, TCP, 80, false), (XB, OUT, TCP, 80, true), (XA, "192.168.1.1", TCP, 22, false)]);
    // `pods` without a namespaceSelector (optional in v0.3.0): pods of every namespace, subject and peer.
    let anywhere = cnp(json!({"metadata": {"name": "p"}, "spec": {"tier": "Admin", "priority": 6,
        "subject": {"pods": {"podSelector": {"matchLabels": {"pod": "a"}}}},
        "egress": [{"action": "Deny", "to": [{"pods": {"podSelector": {"matchLabels": {"pod": "b"}}}}]}]}}));
    check(vec![anywhere], &[(XA, XB, TCP, 80, false), (YA, XB, TCP, 80, false), (XB, XA, TCP, 80, true)]);
}

#[test]
fn staged_policies_are_counted_not_enforced() {
    let s: StagedGlobalNetworkPolicySpec = serde_json::from_value(json!({"selector": "all()", "ingress": [
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]}))
    .unwrap();
    let staged = from_tabby(Kind::StagedGlobal, None, "preview", &s.fields).unwrap();
    let (_, rs) = check(vec![staged], &[(YA, XA, TCP, 80, true), (YA, XA, TCP, 81, true)]);
    let prog = &rs.endpoints["x/a"].0;
    assert!(prog[0].only_staged && prog[0].end == Action::Pass);
    let v = rs.decide(prog, Dir::Ingress, &pkt(YA, XA, TCP, 80));
    assert_eq!(
        v.staged,
        vec![(PolicyId { kind: Kind::StagedGlobal, namespace: None, name: "preview".into() }, Some(0), true)]
    );
    let v = rs.decide(prog, Dir::Ingress, &pkt(YA, XA, TCP, 81));
    assert_eq!(v.staged.len(), 1);
    assert!(!v.staged[0].2, "the staged default-deny would drop it");
}

#[test]
fn sets_are_shared_and_disjoint() {
    let a = knp(json!({"metadata": {"name": "a", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}));
    let b =
        knp(json!({"metadata": {"name": "b", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}));
    let mut c = cluster();
    c.policies = vec![a, b];
    // Only node n1's endpoints.
    let rs = compile(&c, |e| e.node == "n1");
    assert_eq!(rs.endpoints.keys().collect::<Vec<_>>(), vec!["x/a", "x/b"]);
    assert_eq!(rs.sets.len(), 1, "one selector, one set: {:?}", rs.sets);
    let (_, m) = rs.sets.values().next().unwrap();
    assert_eq!(m.nets.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["10.0.0.2/32"]);
    assert_eq!(
        disjoint(["10.0.0.0/8".parse().unwrap(), "10.1.2.3/32".parse().unwrap(), "fd00::/64".parse().unwrap()]).len(),
        2
    );
}

#[test]
fn invalid_fields_are_named() {
    let bad: NetworkPolicySpec =
        serde_json::from_value(json!({"ingress": [{"action": "Allow", "source": {"selector": "app = 'x'"}}]})).unwrap();
    let e = from_tabby(Kind::Namespaced, Some("x"), "bad", &bad.fields).unwrap_err();
    assert_eq!(e.field, "spec.ingress[0].source.selector");
    let ports: NetworkPolicySpec =
        serde_json::from_value(json!({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]})).unwrap();
    assert_eq!(
        from_tabby(Kind::Namespaced, Some("x"), "p", &ports.fields).unwrap_err().field,
        "spec.ingress[0].protocol"
    );
}

/// The indexed compile means what a direct reading of the semantics means: over a generated cluster
/// (selectors of every form, namespaced and global policies, several tiers), each endpoint's programs
/// list exactly the policies whose subject selects it, and each set holds exactly the addresses its
/// peer selector matches.
#[test]
fn indexed_compile_equals_brute_force() {
    let selectors = [
        "app == 'a0'",
        "app in {'a1', 'a2'}",
        "has(role)",
        "app == 'a0' && role == 'r1'",
        "app == 'a1' || role == 'r0'",
        "app != 'a0'",
        "!has(role)",
        "role starts with 'r'",
        "all()",
        "projectcalico.org/namespace == 'n1'",
        "app not in {'a0', 'a1'} || has(role)",
        "pcsa.team == 't1'",
        "has(pcsa.team) && app == 'a2'",
    ];
    let mut c = Cluster { tiers: builtin_tiers(), ..Cluster::default() };
    for ns in 0..3 {
        c.namespaces.insert(format!("n{ns}"), [("team".to_string(), format!("t{}", ns % 2))].into());
    }
    for i in 0..60usize {
        let mut labels = Labels::new();
        labels.insert("app".into(), format!("a{}", i % 4));
        if i % 3 != 0 {
            labels.insert("role".into(), format!("r{}", i % 2));
        }
        c.endpoints.push(Arc::new(Endpoint {
            namespace: format!("n{}", i % 3),
            name: format!("p{i}"),
            node: format!("node{}", i % 2),
            labels: (&labels).into(),
            service_account: Some(format!("sa{}", i % 2)),
            sa_labels: [("team".to_string(), format!("t{}", i % 2))].into(),
            ips: vec![format!("10.0.{}.{}", i / 200, i % 200).parse().unwrap()],
            ports: vec![],
        }));
    }
    for (i, s) in selectors.iter().enumerate() {
        let peer = selectors[(i + 3) % selectors.len()];
        let ns_sel = if i % 2 == 0 { "" } else { "team == 't1'" };
        let spec = json!({"selector": s, "order": i,
            "ingress": [{"action": "Allow", "source": {"selector": peer, "namespaceSelector": ns_sel}}],
            "egress": [{"action": "Deny"}]});
        c.policies.push(np(&format!("n{}", i % 3), &format!("np{i}"), spec));
        c.policies.push(gnp(
            &format!("g{i}"),
            json!({"selector": s, "namespaceSelector": ns_sel, "ingress": [{"action": "Pass"}]}),
        ));
    }
    let rs = compile(&c, |e| e.node == "node0");
    for e in c.endpoints.iter().filter(|e| e.node == "node0") {
        let (ingress, _) = &rs.endpoints[&e.key()];
        let got: BTreeSet<String> = ingress.iter().flat_map(|t| t.policies.iter().map(ToString::to_string)).collect();
        let want: BTreeSet<String> = c
            .policies
            .iter()
            .filter(|p| {
                p.ingress.is_some() && {
                    let l = e.selector_labels();
                    p.subject.namespace.as_ref().is_none_or(|n| *n == e.namespace)
                        && p.subject.selector.matches(&l)
                        && p.subject.namespace_selector.matches(&c.namespace_labels(&e.namespace))
                }
            })
            .map(|p| p.id.to_string())
            .collect();
        assert_eq!(got, want, "{}", e.key());
    }
    assert!(!rs.sets.is_empty());
    for (def, members) in rs.sets.values() {
        let SetDef::Peers(p) = def else { continue };
        let want: BTreeSet<IpNet> = c
            .endpoints
            .iter()
            .filter(|e| {
                let ns_ok = match &p.scope {
                    NsScope::Any => true,
                    NsScope::Same(n) => *n == e.namespace,
                    NsScope::Select(s) => s.matches(&c.namespace_labels(&e.namespace)),
                };
                ns_ok && p.selector.matches(&e.selector_labels())
            })
            .flat_map(|e| e.ips.iter().map(|ip| IpNet::from(*ip)))
            .collect();
        assert_eq!(members.nets, want, "{def:?}");
    }
}

/// `serviceAccounts.selector` and `serviceAccountSelector` read the labels of each pod's ServiceAccount
/// (as Calico does, under `pcsa.`); a pod's own label of that prefix does not count.
#[test]
fn service_account_selectors_read_the_accounts_labels() {
    let mut c = cluster();
    let b = Arc::make_mut(c.endpoints.iter_mut().find(|e| e.key() == "x/b").unwrap());
    b.service_account = Some("db".into());
    b.sa_labels = [("role".to_string(), "db".to_string())].into();
    let a = Arc::make_mut(c.endpoints.iter_mut().find(|e| e.key() == "x/a").unwrap());
    a.labels.insert("pcsa.role".into(), "db".into());
    c.policies = vec![
        np(
            "x",
            "from-db",
            json!({"selector": "pod == 'a'", "ingress": [
                {"action": "Allow", "source": {"serviceAccounts": {"selector": "role == 'db'"}}}]}),
        ),
        gnp(
            "db-quiet",
            json!({"serviceAccountSelector": "role == 'db'", "types": ["Egress"], "egress": [
            {"action": "Allow", "destination": {"nets": ["10.0.0.1/32"]}}, {"action": "Deny"}]}),
        ),
    ];
    let rs = compile(&c, |_| true);
    for (src, dst, want) in [(XB, XA, true), (YA, XA, false), (XB, YA, false), (XA, YA, true)] {
        assert_eq!(allowed(&c, &rs, &pkt(src, dst, TCP, 80)), want, "{src} -> {dst}");
    }
    // The selector as the dataplane's set names it.
    let p = &c.policies[0].ingress.as_ref().unwrap()[0];
    assert_eq!(p.src.sel.as_ref().unwrap().selector.to_string(), "pcsa.role == 'db'");
}
