//! Pure IPAM consistency checks over a snapshot of pools, blocks, affinities, handles, pods and nodes.
//! Leaks are found by `tabby_api::ipam::leak`, the rule the agent's garbage collector releases them by.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tabby_api::ipam::leak::{self, PodFacts};
use tabby_api::ipam::{AffinityState, block, cidr_object_name};
use tabby_api::{BlockAffinitySpec, IPAMBlockSpec, IPAMHandleSpec};

/// A pod as the checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
}

/// Everything the checks read, loaded at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// IPPool name → CIDR string.
    pub pools: Vec<(String, String)>,
    /// IPAMBlock name → spec.
    pub blocks: Vec<(String, IPAMBlockSpec)>,
    /// BlockAffinity name → spec.
    pub affinities: Vec<(String, BlockAffinitySpec)>,
    /// IPAMHandle name → spec.
    pub handles: Vec<(String, IPAMHandleSpec)>,
    pub pods: Vec<PodInfo>,
    /// Names of the cluster's Nodes.
    pub nodes: BTreeSet<String>,
}

/// The kinds of problem `ipam check` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    /// An address is allocated to a pod that does not exist, has finished, runs on another node or has
    /// another address: a leak.
    AllocatedWithoutPod,
    /// An address is allocated to a node (e.g. a tunnel address) that no longer exists: a leak.
    AllocatedWithoutNode,
    /// A pod has an address inside a pool that no block records as allocated.
    PodWithoutAllocation,
    /// An IPAMHandle whose handle holds no address in any block.
    HandleWithoutAddresses,
    /// An IPAMHandle whose per-block counts disagree with the blocks, or a handle used in a block with no IPAMHandle.
    InconsistentHandle,
    /// A block whose allocations, unallocated list and attributes disagree, or that lies outside every pool.
    InconsistentBlock,
    /// A confirmed BlockAffinity whose block does not exist or belongs to another node.
    AffinityWithoutBlock,
}

impl ProblemKind {
    /// The heading `ipam check` prints above problems of this kind.
    pub fn heading(self) -> &'static str {
        match self {
            ProblemKind::AllocatedWithoutPod => "Allocated addresses with no pod (leaked)",
            ProblemKind::AllocatedWithoutNode => "Allocated addresses of nodes that no longer exist (leaked)",
            ProblemKind::PodWithoutAllocation => "Pods whose address has no allocation",
            ProblemKind::HandleWithoutAddresses => "Handles without addresses",
            ProblemKind::InconsistentHandle => "Inconsistent handles",
            ProblemKind::InconsistentBlock => "Inconsistent blocks",
            ProblemKind::AffinityWithoutBlock => "Block affinities without their block",
        }
    }

    /// Whether a problem of this kind is a leaked address that `ipam release` may free.
    pub fn is_leak(self) -> bool {
        matches!(self, ProblemKind::AllocatedWithoutPod | ProblemKind::AllocatedWithoutNode)
    }
}

/// One problem; the fields that apply are set. This is also the format of `ipam check -o report.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub kind: ProblemKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What is wrong, in words.
    pub detail: String,
}

impl Problem {
    fn new(kind: ProblemKind, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            ip: None,
            block: None,
            handle: None,
            namespace: None,
            pod: None,
            node: None,
            detail: detail.into(),
        }
    }
}

/// The file `ipam check -o` writes and `ipam release --from-report` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub problems: Vec<Problem>,
}

/// Runs every check; problems come grouped by kind, in a stable order.
pub fn check(s: &Snapshot) -> Vec<Problem> {
    let pools: Vec<IpNet> = s.pools.iter().filter_map(|(_, c)| block::parse_cidr(c)).collect();
    let blocks: Vec<(&str, IpNet, &IPAMBlockSpec)> =
        s.blocks.iter().filter_map(|(n, b)| block::parse_cidr(&b.cidr).map(|c| (n.as_str(), c, b))).collect();
    let mut problems = Vec::new();
    for (name, spec) in &s.blocks {
        problems.extend(block_problems(name, spec, &pools));
    }
    problems.extend(leaks(s, &blocks, &pools));
    problems.extend(pods_without_allocation(s, &pools, &blocks));
    problems.extend(handle_problems(s, &blocks));
    problems.extend(affinity_problems(s, &blocks));
    problems.sort_by_key(|p| p.kind);
    problems
}

/// The internal consistency of one block: its name, its place in a pool, and the block model's rules.
pub fn block_problems(name: &str, spec: &IPAMBlockSpec, pools: &[IpNet]) -> Vec<Problem> {
    let problem = |detail: String| {
        let mut p = Problem::new(ProblemKind::InconsistentBlock, format!("block {name}: {detail}"));
        p.block = Some(spec.cidr.clone());
        p
    };
    let Some(cidr) = block::parse_cidr(&spec.cidr) else {
        return block::inconsistencies(spec).into_iter().map(problem).collect();
    };
    let mut found = Vec::new();
    if name != cidr_object_name(&spec.cidr) {
        found.push(problem(format!("its name should be {}", cidr_object_name(&spec.cidr))));
    }
    if !pools.iter().any(|p| p.contains(&cidr)) {
        found.push(problem(format!("{cidr} is outside every IP pool")));
    }
    found.extend(block::inconsistencies(spec).into_iter().map(problem));
    found
}

fn leaks(s: &Snapshot, blocks: &[(&str, IpNet, &IPAMBlockSpec)], pools: &[IpNet]) -> Vec<Problem> {
    let pods: BTreeMap<(&str, &str), PodFacts> = s
        .pods
        .iter()
        .map(|p| {
            (
                (p.namespace.as_str(), p.name.as_str()),
                PodFacts { node: p.node.clone(), ips: p.ips.clone(), ..PodFacts::default() },
            )
        })
        .collect();
    let mut found = Vec::new();
    for (_, cidr, spec) in blocks {
        let leaked = leak::in_block(
            cidr,
            spec,
            |ns, name| pods.get(&(ns, name)).cloned(),
            |n| s.nodes.contains(n),
            |ip| pools.iter().any(|p| p.contains(&ip)),
        );
        for f in leaked {
            let kind =
                if f.leak.of_pod() { ProblemKind::AllocatedWithoutPod } else { ProblemKind::AllocatedWithoutNode };
            let ip = f.allocation.ip;
            let mut p =
                Problem::new(kind, format!("{ip} in block {cidr} is allocated, but {}", f.leak.describe(&f.holder)));
            p.ip = Some(ip.to_string());
            p.block = Some(cidr.to_string());
            p.handle = f.allocation.handle().map(str::to_string);
            p.namespace = f.holder.namespace.map(str::to_string);
            p.pod = f.holder.pod.map(str::to_string);
            p.node = f.holder.node.map(str::to_string);
            found.push(p);
        }
    }
    found
}
fn pods_without_allocation(s: &Snapshot, pools: &[IpNet], blocks: &[(&str, IpNet, &IPAMBlockSpec)]) -> Vec<Problem> {
    let mut found = Vec::new();
    for pod in &s.pods {
        for &ip in &pod.ips {
            if !pools.iter().any(|p| p.contains(&ip)) {
                continue;
            }
            let allocated = blocks.iter().any(|(_, cidr, spec)| {
                block::ordinal_of(cidr, ip).and_then(|o| spec.allocations.get(o)).is_some_and(Option::is_some)
            });
            if !allocated {
                let mut p = Problem::new(
                    ProblemKind::PodWithoutAllocation,
                    format!("pod {}/{} uses {ip}, which no block records as allocated", pod.namespace, pod.name),
                );
                p.ip = Some(ip.to_string());
                p.namespace = Some(pod.namespace.clone());
                p.pod = Some(pod.name.clone());
                p.node = pod.node.clone();
                found.push(p);
            }
        }
    }
    found
}

fn handle_problems(s: &Snapshot, blocks: &[(&str, IpNet, &IPAMBlockSpec)]) -> Vec<Problem> {
    // handle → block CIDR → addresses held.
    let mut actual: BTreeMap<&str, BTreeMap<String, i32>> = BTreeMap::new();
    for (_, cidr, spec) in blocks {
        for a in block::allocated(cidr, spec) {
            if let Some(h) = a.handle() {
                *actual.entry(h).or_default().entry(cidr.to_string()).or_default() += 1;
            }
        }
    }
    let mut found = Vec::new();
    let mut recorded = BTreeSet::new();
    for (name, spec) in &s.handles {
        recorded.insert(spec.handle_id.as_str());
        let counts = actual.get(spec.handle_id.as_str());
        let mut p = match counts {
            None => Problem::new(
                ProblemKind::HandleWithoutAddresses,
                format!("handle {} (IPAMHandle {name}) holds no address in any block", spec.handle_id),
            ),
            Some(counts) => {
                let expected: BTreeMap<String, i32> = spec.block.iter().map(|(k, v)| (normal(k), *v)).collect();
                if &expected == counts {
                    continue;
                }
                Problem::new(
                    ProblemKind::InconsistentHandle,
                    format!(
                        "handle {} (IPAMHandle {name}) records {} but the blocks hold {}",
                        spec.handle_id,
                        describe_counts(&expected),
                        describe_counts(counts)
                    ),
                )
            }
        };
        p.handle = Some(spec.handle_id.clone());
        found.push(p);
    }
    for (handle, counts) in &actual {
        if !recorded.contains(handle) {
            let mut p = Problem::new(
                ProblemKind::InconsistentHandle,
                format!("handle {handle} holds {} but has no IPAMHandle", describe_counts(counts)),
            );
            p.handle = Some(handle.to_string());
            found.push(p);
        }
    }
    found
}

/// A CIDR in canonical form (so `10.0.0.0/26` written differently still matches); unparsable ones unchanged.
fn normal(cidr: &str) -> String {
    block::parse_cidr(cidr).map_or_else(|| cidr.to_string(), |c| c.to_string())
}

fn describe_counts(counts: &BTreeMap<String, i32>) -> String {
    if counts.is_empty() {
        return "no addresses".into();
    }
    counts.iter().map(|(b, n)| format!("{n} in {b}")).collect::<Vec<_>>().join(", ")
}

fn affinity_problems(s: &Snapshot, blocks: &[(&str, IpNet, &IPAMBlockSpec)]) -> Vec<Problem> {
    let mut found = Vec::new();
    for (name, spec) in &s.affinities {
        if spec.state != AffinityState::Confirmed {
            continue;
        }
        let want = normal(&spec.cidr);
        let block = blocks.iter().find(|(_, c, _)| c.to_string() == want);
        let why = match block {
            None => {
                format!("BlockAffinity {name}: node {} claims block {}, which does not exist", spec.node, spec.cidr)
            }
            Some((_, _, b)) if b.affinity.as_deref() != Some(&format!("host:{}", spec.node)) => format!(
                "BlockAffinity {name}: node {} claims block {}, but the block's affinity is {}",
                spec.node,
                spec.cidr,
                b.affinity.as_deref().unwrap_or("unset")
            ),
            Some(_) => continue,
        };
        let mut p = Problem::new(ProblemKind::AffinityWithoutBlock, why);
        p.block = Some(spec.cidr.clone());
        p.node = Some(spec.node.clone());
        found.push(p);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_api::ipam::AllocationAttribute;

    fn pod_attr(handle: &str, ns: &str, pod: &str) -> AllocationAttribute {
        AllocationAttribute {
            handle_id: Some(handle.into()),
            secondary: BTreeMap::from([
                ("namespace".into(), ns.into()),
                ("pod".into(), pod.into()),
                ("node".into(), "n1".into()),
                ("type".into(), "pod".into()),
            ]),
        }
    }

    /// A clean /30 block: .0 for pod a, .1 for pod b, .2 and .3 free.
    fn clean() -> Snapshot {
        let block = IPAMBlockSpec {
            cidr: "10.0.0.0/30".into(),
            affinity: Some("host:n1".into()),
            allocations: vec![Some(0), Some(1), None, None],
            unallocated: vec![2, 3],
            attributes: vec![pod_attr("h-a", "default", "a"), pod_attr("h-b", "default", "b")],
            ..Default::default()
        };
        let handle = |h: &str| IPAMHandleSpec {
            handle_id: h.into(),
            block: BTreeMap::from([("10.0.0.0/30".into(), 1)]),
            deleted: false,
        };
        let pod = |name: &str, ip: &str| PodInfo {
            namespace: "default".into(),
            name: name.into(),
            node: Some("n1".into()),
            ips: vec![ip.parse().unwrap()],
        };
        Snapshot {
            pools: vec![("pool".into(), "10.0.0.0/24".into())],
            blocks: vec![("10-0-0-0-30".into(), block)],
            affinities: vec![(
                "n1-10-0-0-0-30".into(),
                BlockAffinitySpec {
                    state: AffinityState::Confirmed,
                    node: "n1".into(),
                    cidr: "10.0.0.0/30".into(),
                    deleted: false,
                },
            )],
            handles: vec![("h-a".into(), handle("h-a")), ("h-b".into(), handle("h-b"))],
            pods: vec![pod("a", "10.0.0.0"), pod("b", "10.0.0.1")],
            nodes: BTreeSet::from(["n1".into()]),
        }
    }

    fn kinds(s: &Snapshot) -> Vec<ProblemKind> {
        check(s).into_iter().map(|p| p.kind).collect()
    }

    #[test]
    fn clean_snapshot_has_no_problems() {
        assert_eq!(check(&clean()), vec![]);
    }

    #[test]
    fn leaked_allocation_of_a_missing_pod() {
        let mut s = clean();
        s.pods.retain(|p| p.name != "b");
        let problems = check(&s);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind, ProblemKind::AllocatedWithoutPod);
        assert_eq!(problems[0].ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(problems[0].handle.as_deref(), Some("h-b"));
        assert_eq!(problems[0].pod.as_deref(), Some("b"));
    }

    #[test]
    fn pod_with_a_different_address_leaks_the_old_one() {
        let mut s = clean();
        s.pods[1].ips = vec!["10.0.0.9".parse().unwrap()];
        assert_eq!(kinds(&s), vec![ProblemKind::AllocatedWithoutPod, ProblemKind::PodWithoutAllocation]);
    }

    #[test]
    fn pod_without_ip_yet_is_not_a_leak() {
        let mut s = clean();
        s.pods[1].ips.clear();
        assert_eq!(check(&s), vec![]);
    }

    #[test]
    fn tunnel_address_of_a_gone_node() {
        let mut s = clean();
        let block = &mut s.blocks[0].1;
        block.allocations[2] = Some(2);
        block.unallocated = vec![3];
        block.attributes.push(AllocationAttribute {
            handle_id: Some("vxlan-tunnel-addr-n2".into()),
            secondary: BTreeMap::from([("node".into(), "n2".into()), ("type".into(), "vxlanTunnelAddress".into())]),
        });
        s.handles.push((
            "vxlan-tunnel-addr-n2".into(),
            IPAMHandleSpec {
                handle_id: "vxlan-tunnel-addr-n2".into(),
                block: BTreeMap::from([("10.0.0.0/30".into(), 1)]),
                deleted: false,
            },
        ));
        assert_eq!(kinds(&s), vec![ProblemKind::AllocatedWithoutNode]);
        s.nodes.insert("n2".into());
        assert_eq!(kinds(&s), vec![]);
    }

    #[test]
    fn pod_outside_pools_is_ignored_and_inside_without_allocation_is_reported() {
        let mut s = clean();
        s.pods.push(PodInfo {
            namespace: "x".into(),
            name: "host".into(),
            node: None,
            ips: vec!["192.0.2.1".parse().unwrap()],
        });
        assert_eq!(kinds(&s), vec![]);
        s.pods.push(PodInfo {
            namespace: "x".into(),
            name: "c".into(),
            node: None,
            ips: vec!["10.0.0.3".parse().unwrap()],
        });
        s.pods.push(PodInfo {
            namespace: "x".into(),
            name: "d".into(),
            node: None,
            ips: vec!["10.0.0.200".parse().unwrap()],
        });
        let problems = check(&s);
        assert_eq!(problems.iter().map(|p| p.kind).collect::<Vec<_>>(), vec![ProblemKind::PodWithoutAllocation; 2]);
        assert_eq!(problems[0].ip.as_deref(), Some("10.0.0.3"));
    }

    #[test]
    fn handle_problems_are_found() {
        let mut s = clean();
        s.handles.push((
            "h-gone".into(),
            IPAMHandleSpec { handle_id: "h-gone".into(), block: BTreeMap::new(), deleted: false },
        ));
        s.handles[0].1.block.insert("10.0.0.0/30".into(), 2);
        s.handles.remove(1);
        let problems = check(&s);
        let kinds: Vec<_> = problems.iter().map(|p| (p.kind, p.handle.clone().unwrap())).collect();
        assert_eq!(
            kinds,
            vec![
                (ProblemKind::HandleWithoutAddresses, "h-gone".into()),
                (ProblemKind::InconsistentHandle, "h-a".into()),
                (ProblemKind::InconsistentHandle, "h-b".into()),
            ]
        );
    }

    #[test]
    fn every_block_inconsistency_is_found() {
        let pools = [block::parse_cidr("10.0.0.0/24").unwrap()];
        let mut b = clean().blocks[0].1.clone();
        assert!(block_problems("10-0-0-0-30", &b, &pools).is_empty());
        b.allocations = vec![Some(0), Some(5), Some(0), None, None];
        b.unallocated = vec![0, 2, 2, 9];
        let details: Vec<String> =
            block_problems("wrong", &b, &pools).into_iter().map(|p| p.detail.replace("block wrong: ", "")).collect();
        // The name first, then every rule of the block model the block breaks (each one is listed in
        // tabby_api::ipam::block's test of the same block).
        assert_eq!(details[0], "its name should be 10-0-0-0-30");
        assert_eq!(details[1..], block::inconsistencies(&b));
        assert_eq!(details.len(), 11);
        let outside = block_problems(
            "10-1-0-0-30",
            &IPAMBlockSpec { cidr: "10.1.0.0/30".into(), ..clean().blocks[0].1.clone() },
            &pools,
        );
        assert!(outside[0].detail.contains("outside every IP pool"), "{outside:?}");
        let bad = block_problems("x", &IPAMBlockSpec { cidr: "nope".into(), ..Default::default() }, &pools);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn affinity_without_block_or_with_another_owner() {
        let mut s = clean();
        s.affinities.push((
            "n1-10-0-0-4-30".into(),
            BlockAffinitySpec {
                state: AffinityState::Confirmed,
                node: "n1".into(),
                cidr: "10.0.0.4/30".into(),
                deleted: false,
            },
        ));
        s.affinities.push((
            "n1-10-0-0-8-30".into(),
            BlockAffinitySpec {
                state: AffinityState::Pending,
                node: "n1".into(),
                cidr: "10.0.0.8/30".into(),
                deleted: false,
            },
        ));
        assert_eq!(kinds(&s), vec![ProblemKind::AffinityWithoutBlock]);
        s.blocks[0].1.affinity = Some("host:n9".into());
        assert_eq!(kinds(&s), vec![ProblemKind::AffinityWithoutBlock; 2]);
    }

    #[test]
    fn report_round_trips_as_json() {
        let mut s = clean();
        s.pods.clear();
        let report = Report { problems: check(&s) };
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains("\"kind\":\"allocatedWithoutPod\""), "{text}");
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), report);
        assert!(report.problems.iter().all(|p| p.kind.is_leak()));
    }
}
