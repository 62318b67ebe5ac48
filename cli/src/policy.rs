//! `policy trace --from NS/POD|IP --to NS/POD|IP --port PORT/PROTO [--live]`: the verdict of one
//! connection and the tier, policy and rule that decide it in each direction, computed by the model
//! the agent runs (`tabby_api::policy::cluster::build`, `model::compile`, `Ruleset::decide`) from the
//! same objects. `--live` adds the deciding rule's packet counter from the agent of each pod's node.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube::api::{Api, ListParams};
use tabby_api::IPAMBlock;
use tabby_api::pod::LeanPod;
use tabby_api::policy::cluster::{self, Objects};
use tabby_api::policy::cnp::ClusterNetworkPolicy;
use tabby_api::policy::model::{self, Decider, Dir, Endpoint, Packet, Ruleset, Verdict, compile};
use tabby_api::policy::{
    Action, GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, NetworkSet, StagedGlobalNetworkPolicy,
    StagedNetworkPolicy, Tier,
};

use crate::cluster::{Cluster, Kind};
use crate::error::{Error, Result};
use crate::output;

/// One end of the traced connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Pod { namespace: String, name: String },
    Ip(IpAddr),
}

/// `NS/POD`, `POD` (in the current namespace) or an address.
pub fn parse_end(s: &str, namespace: &str) -> End {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return End::Ip(ip);
    }
    match s.split_once('/') {
        Some((ns, name)) => End::Pod { namespace: ns.into(), name: name.into() },
        None => End::Pod { namespace: namespace.into(), name: s.into() },
    }
}

/// `80/TCP`, `53/udp`, `80` (TCP).
pub fn parse_port(s: &str) -> std::result::Result<(u16, u8), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port = port.parse::<u16>().map_err(|_| format!("{port:?} is not a port"))?;
    let proto = match proto.to_ascii_uppercase().as_str() {
        "TCP" => model::TCP,
        "UDP" => model::UDP,
        "SCTP" => model::SCTP,
        other => return Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
    };
    Ok((port, proto))
}

/// The whole trace, for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub from: (String, IpAddr, Option<String>),
    pub to: (String, IpAddr, Option<String>),
    /// Egress of the source pod, ingress of the destination pod (`None`: not a pod of the cluster).
    pub egress: Option<Verdict>,
    pub ingress: Option<Verdict>,
    /// The policies each program met, by tier.
    pub egress_tiers: Vec<(String, Vec<String>)>,
    pub ingress_tiers: Vec<(String, Vec<String>)>,
}

fn find<'a>(c: &'a model::Cluster, end: &End) -> Option<&'a Endpoint> {
    match end {
        End::Pod { namespace, name } => {
            c.endpoints.iter().find(|e| e.namespace == *namespace && e.name == *name).map(|e| &**e)
        }
        End::Ip(ip) => c.endpoints.iter().find(|e| e.ips.contains(ip)).map(|e| &**e),
    }
}

fn describe(
    end: &End,
    ep: Option<&Endpoint>,
    want_v6: Option<bool>,
) -> std::result::Result<(String, IpAddr, Option<String>), String> {
    match (end, ep) {
        (End::Ip(ip), Some(e)) => Ok((e.key(), *ip, Some(e.node.clone()))),
        (End::Ip(ip), None) => Ok(("(outside the cluster's pods)".into(), *ip, None)),
        (End::Pod { namespace, name }, None) => Err(format!(
            "pod {namespace}/{name} is not an endpoint (absent, host network, finished, or no address yet)"
        )),
        (End::Pod { .. }, Some(e)) => {
            let ip = e
                .ips
                .iter()
                .find(|ip| want_v6.is_none_or(|v6| ip.is_ipv6() == v6))
                .or_else(|| e.ips.first())
                .copied()
                .ok_or_else(|| format!("pod {} has no address yet", e.key()))?;
            Ok((e.key(), ip, Some(e.node.clone())))
        }
    }
}

fn tiers(rs: &Ruleset, key: &str, dir: Dir) -> Vec<(String, Vec<String>)> {
    let Some((i, e)) = rs.endpoints.get(key) else { return vec![] };
    let prog = if dir == Dir::Ingress { i } else { e };
    prog.iter().map(|t| (t.tier.clone(), t.policies.iter().map(ToString::to_string).collect())).collect()
}

/// Traces a connection through a cluster (pure: the CLI lists the objects, this decides).
pub fn trace(objects: &Objects, from: &End, to: &End, port: u16, protocol: u8) -> std::result::Result<Trace, String> {
    let built = cluster::build(objects, &[]);
    let c = &built.cluster;
    let (fe, te) = (find(c, from), find(c, to));
    let to_v6 = match to {
        End::Ip(ip) => Some(ip.is_ipv6()),
        End::Pod { .. } => None,
    };
    let from_d = describe(from, fe, to_v6)?;
    let to_d = describe(to, te, Some(from_d.1.is_ipv6()))?;
    if from_d.1.is_ipv6() != to_d.1.is_ipv6() {
        return Err(format!("{} and {} have no address of the same family", from_d.1, to_d.1));
    }
    let keys: Vec<String> = [fe, te].into_iter().flatten().map(Endpoint::key).collect();
    let rs = compile(c, |e| keys.contains(&e.key()));
    let pkt = Packet { src: from_d.1, dst: to_d.1, protocol, src_port: 40000, dst_port: port, icmp: None };
    let decide = |e: Option<&Endpoint>, dir: Dir| {
        e.map(|e| {
            let (i, eg) = rs.endpoints.get(&e.key()).cloned().unwrap_or_default();
            rs.decide(if dir == Dir::Ingress { &i } else { &eg }, dir, &pkt)
        })
    };
    Ok(Trace {
        egress: decide(fe, Dir::Egress),
        ingress: decide(te, Dir::Ingress),
        egress_tiers: fe.map(|e| tiers(&rs, &e.key(), Dir::Egress)).unwrap_or_default(),
        ingress_tiers: te.map(|e| tiers(&rs, &e.key(), Dir::Ingress)).unwrap_or_default(),
        from: from_d,
        to: to_d,
    })
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Pass => "pass",
        Action::Log => "log",
    }
}

/// What decided, in words.
pub fn decider(d: &Decider) -> String {
    match d {
        Decider::NoPolicy => "no policy applies in this direction".into(),
        Decider::AllPassed => "every tier passed it on; nothing denied it".into(),
        Decider::TierEnd { tier } => format!("tier {tier}: no rule matched (the tier's default action, Deny)"),
        Decider::Rule { tier, policy, rule, name, action: a } => {
            let name = name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            format!("tier {tier}, {policy}, rule {rule}{name}: {}", action(*a))
        }
    }
}

/// The trace as text (what `policy trace` prints, without `--live`).
pub fn render(t: &Trace, port: u16, protocol: u8) -> String {
    let proto = match protocol {
        model::UDP => "UDP",
        model::SCTP => "SCTP",
        _ => "TCP",
    };
    let node = |n: &Option<String>| n.as_ref().map(|n| format!(", node {n}")).unwrap_or_default();
    let mut out = format!(
        "from  {} ({}{})\nto    {} ({}{})\nport  {port}/{proto}\n\n",
        t.from.0,
        t.from.1,
        node(&t.from.2),
        t.to.0,
        t.to.1,
        node(&t.to.2)
    );
    let mut verdict = ("ALLOW", String::from("nothing denies it"));
    for (label, who, v, tiers) in
        [("egress", &t.from.0, &t.egress, &t.egress_tiers), ("ingress", &t.to.0, &t.ingress, &t.ingress_tiers)]
    {
        let Some(v) = v else {
            out += &format!("{label:<8} not a pod of the cluster: not policed here\n");
            continue;
        };
        let word = if v.allowed { "ALLOW" } else { "DENY" };
        out += &format!("{label:<8} of {who}: {word}, {}\n", decider(&v.decider));
        for (tier, ps) in tiers {
            out += &format!("         tier {tier}: {}\n", ps.join(", "));
        }
        for (p, r) in &v.logged {
            out += &format!("         logged by {p}, rule {r}\n");
        }
        for (p, r, allow) in &v.staged {
            let what = if *allow { "allow" } else { "deny" };
            match r {
                Some(r) => out += &format!("         staged: {p}, rule {r} would {what}\n"),
                None => out += &format!("         staged: {p} would deny (no rule of its tier matched)\n"),
            }
        }
        if !v.allowed && verdict.0 == "ALLOW" {
            verdict = ("DENY", format!("{label} of {who}: {}", decider(&v.decider)));
        }
    }
    out += &format!("\nverdict: {} ({})\n", verdict.0, verdict.1);
    out
}

async fn list_opt<K: Kind>(cluster: &Cluster) -> Result<Vec<K>> {
    match cluster.list::<K>().await {
        Ok(v) => Ok(v),
        // An optional kind whose CRD is missing (ClusterNetworkPolicy) is simply empty.
        Err(Error::NotInstalled { .. }) => Ok(vec![]),
        Err(e) => Err(e),
    }
}

async fn all<K>(cluster: &Cluster) -> Result<Vec<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(cluster.client.clone());
    api.list(&ListParams::default()).await.map(|l| l.items).map_err(|e| cluster.explain(e, "list"))
}

/// The agent's counter for the rule that decided, from the agent of `node` (through the API server's
/// node proxy to the agent's metrics port).
async fn live(cluster: &Cluster, node: &str, dir: Dir, v: &Verdict) -> String {
    let (tier, policy, rule, act) = match &v.decider {
        Decider::Rule { tier, policy, rule, action: a, .. } => {
            (tier.clone(), policy.to_string(), rule.to_string(), action(*a))
        }
        Decider::TierEnd { tier } => (tier.clone(), String::new(), String::new(), "tier-deny"),
        _ => return String::new(),
    };
    let port = tabby_api::agentenv::DEFAULT_HEALTH_PORT;
    let path = format!("/api/v1/nodes/{node}:{port}/proxy/metrics");
    let req = match http::Request::get(&path).body(Vec::new()) {
        Ok(r) => r,
        Err(e) => return format!("         live: {e}\n"),
    };
    match cluster.client.request_text(req).await {
        Ok(text) => {
            let want = [
                format!("direction=\"{}\"", dir.as_str()),
                format!("tier=\"{tier}\""),
                format!("policy=\"{policy}\""),
                format!("rule=\"{rule}\""),
                format!("action=\"{act}\""),
            ];
            let n: u64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("tabby_agent_policy_packets_total{") && want.iter().all(|w| l.contains(w.as_str()))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            format!("         live: {n} packets matched it on {node}\n")
        }
        Err(e) => format!("         live: the agent of {node} did not answer ({e})\n"),
    }
}

/// Runs `policy trace`.
pub async fn run(cluster: &Cluster, from: &str, to: &str, port: &str, with_live: bool) -> Result<()> {
    let (port, protocol) = parse_port(port).map_err(Error::Trace)?;
    let (from, to) = (parse_end(from, &cluster.namespace), parse_end(to, &cluster.namespace));
    let pods: Vec<LeanPod> = all(cluster).await?;
    let service_accounts: Vec<ServiceAccount> = all(cluster).await?;
    let k8s: Vec<K8sNetworkPolicy> = all(cluster).await?;
    let namespaces: Vec<Namespace> = Api::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| cluster.explain(e, "list namespaces"))?;
    let nodes: Vec<Node> = Api::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| cluster.explain(e, "list nodes"))?;
    let blocks: Vec<IPAMBlock> = cluster.list().await?;
    let namespaced: Vec<NetworkPolicy> = cluster.list().await?;
    let global: Vec<GlobalNetworkPolicy> = cluster.list().await?;
    let staged: Vec<StagedNetworkPolicy> = cluster.list().await?;
    let staged_global: Vec<StagedGlobalNetworkPolicy> = cluster.list().await?;
    let sets: Vec<NetworkSet> = cluster.list().await?;
    let global_sets: Vec<GlobalNetworkSet> = cluster.list().await?;
    let tiers: Vec<Tier> = cluster.list().await?;
    let cnps: Vec<ClusterNetworkPolicy> = list_opt(cluster).await?;
    let objects = Objects {
        pods: pods.iter().collect(),
        namespaces: namespaces.iter().collect(),
        service_accounts: service_accounts.iter().collect(),
        nodes: nodes.iter().collect(),
        blocks: blocks.iter().collect(),
        k8s: k8s.iter().collect(),
        namespaced: namespaced.iter().collect(),
        global: global.iter().collect(),
        staged: staged.iter().collect(),
        staged_global: staged_global.iter().collect(),
        sets: sets.iter().collect(),
        global_sets: global_sets.iter().collect(),
        tiers: tiers.iter().collect(),
        cnps: cnps.iter().collect(),
    };
    let t = trace(&objects, &from, &to, port, protocol).map_err(Error::Trace)?;
    let mut text = render(&t, port, protocol);
    if with_live {
        for (dir, v, node) in [(Dir::Egress, &t.egress, &t.from.2), (Dir::Ingress, &t.ingress, &t.to.2)] {
            if let (Some(v), Some(node)) = (v, node) {
                text += &live(cluster, node, dir, v).await;
            }
        }
    }
    output::print(&text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn traces_name_the_deciding_rule() {
        let pod = |ns: &str, name: &str, ip: &str, labels: serde_json::Value| -> LeanPod {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": "n1", "containers": []}, "status": {"podIPs": [{"ip": ip}]}}))
            .unwrap()
        };
        let pods = [pod("x", "a", "10.0.0.1", json!({"app": "web"})), pod("x", "b", "10.0.0.2", json!({"app": "cli"}))];
        let np: K8sNetworkPolicy = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}], "ports": [{"port": 80}]}]}}))
        .unwrap();
        let o = Objects { pods: pods.iter().collect(), k8s: vec![&np], ..Objects::default() };
        let (from, to) = (parse_end("x/b", "default"), parse_end("a", "x"));
        let t = trace(&o, &from, &to, 80, model::TCP).unwrap();
        let text = render(&t, 80, model::TCP);
        assert!(text.contains("ingress  of x/a: ALLOW, tier default, knp:x/web, rule 0: allow"), "{text}");
        assert!(text.contains("egress   of x/b: ALLOW, no policy applies"), "{text}");
        assert!(text.ends_with("verdict: ALLOW (nothing denies it)\n"), "{text}");
        let t = trace(&o, &from, &to, 81, model::TCP).unwrap();
        let text = render(&t, 81, model::TCP);
        assert!(text.contains("verdict: DENY (ingress of x/a: tier default: no rule matched"), "{text}");
        let t = trace(&o, &End::Ip("203.0.113.9".parse().unwrap()), &to, 80, model::TCP).unwrap();
        assert!(render(&t, 80, model::TCP).contains("egress   not a pod of the cluster"));
        assert!(trace(&o, &parse_end("x/zz", "x"), &to, 80, model::TCP).is_err());
        assert_eq!(parse_port("53/udp"), Ok((53, model::UDP)));
        assert!(parse_port("x/TCP").is_err());
    }
}
