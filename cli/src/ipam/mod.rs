//! `ipam show`, `ipam check` and `ipam release`: the cluster side. The block arithmetic and the leak rule
//! are `tabby_api::ipam::{block, leak}` (the agent's too), the checks in [`check`].

pub mod check;
mod release;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use tabby_api::ipam::block;
use tabby_api::{BlockAffinity, IPAMBlock, IPAMHandle, IPPool};

use self::check::{PodInfo, Problem, Report, Snapshot};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::output;
use crate::table::{Align, Table, count_with_percent};
use crate::wep::pod_ips;

/// Pods that hold their addresses: not host-network, not finished (a finished pod's address has been released).
fn live_pods(pods: Vec<Pod>) -> Vec<Pod> {
    pods.into_iter()
        .filter(|p| !p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false))
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect()
}

fn pod_info(pod: &Pod) -> PodInfo {
    PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ips: pod_ips(pod),
    }
}

fn name<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// `ipam show`: usage per pool (and block), or who holds `ip`.
pub async fn show(cluster: &Cluster, show_blocks: bool, ip: Option<IpAddr>) -> Result<()> {
    let pools = cluster.list::<IPPool>().await?;
    if pools.is_empty() {
        cluster.require_installation().await?;
    }
    let blocks = cluster.list::<IPAMBlock>().await?;
    if let Some(ip) = ip {
        let pods = live_pods(cluster.pods(true).await?);
        output::print(&describe_ip(ip, &pools, &blocks, &pods));
        return Ok(());
    }
    if pools.is_empty() {
        output::note("No IP pools found: the Installation's ipPools list may be empty (pools managed elsewhere).");
        return Ok(());
    }
    output::print(&usage_table(&pools, &blocks, show_blocks).bordered(&[Align::Left, Align::Left, Align::Right]));
    Ok(())
}

/// GROUPING | CIDR | IPS TOTAL | IPS IN USE | IPS FREE, a row per pool and, with `show_blocks`, per block.
pub fn usage_table(pools: &[IPPool], blocks: &[IPAMBlock], show_blocks: bool) -> Table {
    let mut t = Table::new(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]);
    let parsed: Vec<(IpNet, &IPAMBlock)> =
        blocks.iter().filter_map(|b| block::parse_cidr(&b.spec.cidr).map(|c| (c, b))).collect();
    let mut pools: Vec<(IpNet, &IPPool)> =
        pools.iter().filter_map(|p| block::parse_cidr(&p.spec.cidr).map(|c| (c, p))).collect();
    pools.sort_by_key(|(c, _)| *c);
    let row = |t: &mut Table, grouping: &str, cidr: &IpNet, used: u128| {
        let total = block::addresses(cidr);
        t.push([
            grouping.to_string(),
            cidr.to_string(),
            total.to_string(),
            count_with_percent(used, total),
            count_with_percent(total - used.min(total), total),
        ]);
    };
    for (pool, _) in &pools {
        let mut inside: Vec<&(IpNet, &IPAMBlock)> = parsed.iter().filter(|(c, _)| pool.contains(c)).collect();
        inside.sort_by_key(|(c, _)| *c);
        let used: u128 = inside.iter().map(|(_, b)| block::in_use(&b.spec) as u128).sum();
        row(&mut t, "IP Pool", pool, used);
        if show_blocks {
            for (cidr, b) in inside {
                row(&mut t, "Block", cidr, block::in_use(&b.spec) as u128);
            }
        }
    }
    t
}

/// Who holds `ip`, in calicoctl's words.
pub fn describe_ip(ip: IpAddr, pools: &[IPPool], blocks: &[IPAMBlock], pods: &[Pod]) -> String {
    let pool = pools.iter().find(|p| block::parse_cidr(&p.spec.cidr).is_some_and(|c| c.contains(&ip)));
    let user = pods.iter().find(|p| pod_ips(p).contains(&ip)).map(|p| {
        format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.name.as_deref().unwrap_or_default()
        )
    });
    let held_in =
        blocks.iter().find_map(|b| block::parse_cidr(&b.spec.cidr).filter(|c| c.contains(&ip)).map(|c| (c, b)));
    let mut out = String::new();
    let allocation = held_in.and_then(|(cidr, b)| {
        block::allocated(&cidr, &b.spec)
            .into_iter()
            .find(|a| a.ip == ip)
            .map(|a| (a.handle().map(str::to_string), a.attribute.map(|x| x.secondary.clone()).unwrap_or_default()))
    });
    match (&allocation, pool) {
        (Some((handle, secondary)), _) => {
            out.push_str(&format!("IP {ip} is in use\n"));
            let mut field = |k: &str, v: &str| out.push_str(&format!("  {:<10} {v}\n", format!("{k}:")));
            if let Some(p) = pool {
                field("pool", &name(p));
            }
            if let Some((cidr, b)) = held_in {
                field("block", &format!("{cidr} ({})", b.spec.affinity.as_deref().unwrap_or("no affinity")));
            }
            field("handle", handle.as_deref().unwrap_or("<none>"));
            for key in ["namespace", "pod", "node", "type"] {
                if let Some(v) = secondary.get(key) {
                    field(key, v);
                }
            }
            if let Some(user) = &user {
                field("used by", &format!("pod {user}"));
            }
        }
        (None, Some(p)) => {
            out.push_str(&format!("IP {ip} is not assigned (pool {}", name(p)));
            match held_in {
                Some((cidr, b)) => {
                    out.push_str(&format!(", block {cidr} of {})\n", b.spec.affinity.as_deref().unwrap_or("no node")))
                }
                None => out.push_str(", in no block yet)\n"),
            }
            if let Some(user) = &user {
                out.push_str(&format!(
                    "but pod {user} uses it: its allocation is missing (run kubectl tabby ipam check)\n"
                ));
            }
        }
        (None, None) => out.push_str(&format!("IP {ip} is not in any Tabby IP pool\n")),
    }
    out
}

async fn snapshot(cluster: &Cluster) -> Result<Snapshot> {
    let mut s = objects_snapshot(
        &cluster.list::<IPPool>().await?,
        cluster.list::<IPAMBlock>().await?,
        cluster.pods(true).await?,
        cluster.node_names().await?,
    );
    s.affinities = cluster.list::<BlockAffinity>().await?.into_iter().map(|a| (name(&a), a.spec)).collect();
    s.handles = cluster.list::<IPAMHandle>().await?.into_iter().map(|h| (name(&h), h.spec)).collect();
    Ok(s)
}

/// The snapshot's pools, blocks, pods and nodes from the API's objects.
fn objects_snapshot(pools: &[IPPool], blocks: Vec<IPAMBlock>, pods: Vec<Pod>, nodes: Vec<String>) -> Snapshot {
    Snapshot {
        pools: pools.iter().map(|p| (name(p), p.spec.cidr.clone())).collect(),
        blocks: blocks.into_iter().map(|b| (name(&b), b.spec)).collect(),
        pods: live_pods(pods).iter().map(pod_info).collect(),
        nodes: nodes.into_iter().collect::<BTreeSet<_>>(),
        ..Snapshot::default()
    }
}

/// `ipam check`: prints every problem grouped by kind; with `report`, also writes them as JSON.
pub async fn check(cluster: &Cluster, report: Option<&Path>) -> Result<()> {
    output::print("Checking IPAM for inconsistencies...\n");
    let s = snapshot(cluster).await?;
    output::print(&format!(
        "Loaded {} IP pools, {} blocks, {} block affinities, {} handles, {} pods and {} nodes.\n",
        s.pools.len(),
        s.blocks.len(),
        s.affinities.len(),
        s.handles.len(),
        s.pods.len(),
        s.nodes.len()
    ));
    let problems = check::check(&s);
    output::print(&render_problems(&problems));
    if let Some(path) = report {
        let text = serde_json::to_string_pretty(&Report { problems: problems.clone() })
            .map_err(|e| Error::Output(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|source| Error::WriteFile { path: path.to_path_buf(), source })?;
        output::print(&format!("Report written to {}.\n", path.display()));
        if problems.iter().any(|p| p.kind.is_leak()) {
            output::print(&format!(
                "Release the leaked addresses with: kubectl tabby ipam release --from-report {}\n",
                path.display()
            ));
        }
    }
    output::print(&format!("Check complete; found {} problems.\n", problems.len()));
    Ok(())
}

/// The problems under a heading per kind, in the order [`check::check`] returns them.
pub fn render_problems(problems: &[Problem]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < problems.len() {
        let kind = problems[i].kind;
        let group: Vec<&Problem> = problems[i..].iter().take_while(|p| p.kind == kind).collect();
        out.push_str(&format!("\n{} ({}):\n", kind.heading(), group.len()));
        for p in &group {
            out.push_str(&format!("  {}\n", p.detail));
        }
        i += group.len();
    }
    if !problems.is_empty() {
        out.push('\n');
    }
    out
}

/// `ipam release --ip` or `--from-report`.
pub async fn release(cluster: &Cluster, ip: Option<IpAddr>, report: Option<&Path>) -> Result<()> {
    if let Some(ip) = ip {
        let released = release::release_one(cluster, ip, None).await?;
        output::print(&format!("Released {ip}{released}\n"));
        return Ok(());
    }
    let Some(path) = report else { return Ok(()) };
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile { path: path.to_path_buf(), source })?;
    let report: Report = serde_json::from_str(&text)
        .map_err(|e| Error::BadReport { path: path.to_path_buf(), detail: e.to_string() })?;
    let leaks: Vec<&Problem> = report.problems.iter().filter(|p| p.kind.is_leak()).collect();
    if leaks.is_empty() {
        output::print("The report lists no leaked addresses; nothing to release.\n");
        return Ok(());
    }
    let mut failed = 0;
    for p in &leaks {
        let Some(ip) = p.ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) else {
            output::note(&format!("skipped a leak without a valid address: {}", p.detail));
            failed += 1;
            continue;
        };
        match release::release_one(cluster, ip, Some(p)).await {
            Ok(released) => output::print(&format!("Released {ip}{released}\n")),
            Err(Error::Ipam(why)) => {
                output::note(&format!("not released: {why}"));
                failed += 1;
            }
            Err(e) => return Err(e),
        }
    }
    output::print(&format!("Released {} of {} leaked addresses.\n", leaks.len() - failed, leaks.len()));
    if failed > 0 {
        return Err(Error::Ipam(format!(
            "{failed} addresses were not released (see above); run kubectl tabby ipam check again to see what remains"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tabby_api::ipam::AllocationAttribute;
    use tabby_api::{IPAMBlockSpec, IPPoolSpec};

    use super::*;

    fn pool(cidr: &str) -> IPPool {
        IPPool::new(
            "p",
            serde_json::from_value::<IPPoolSpec>(
                serde_json::json!({"cidr": cidr, "ipipMode": "Never", "vxlanMode": "Never"}),
            )
            .unwrap(),
        )
    }

    fn block(cidr: &str, used: usize, size: usize) -> IPAMBlock {
        let mut allocations = vec![None; size];
        for a in allocations.iter_mut().take(used) {
            *a = Some(0);
        }
        IPAMBlock::new(
            "b",
            IPAMBlockSpec {
                cidr: cidr.into(),
                affinity: Some("host:n1".into()),
                allocations,
                unallocated: (used as i32..size as i32).collect(),
                attributes: vec![AllocationAttribute {
                    handle_id: Some("h".into()),
                    secondary: BTreeMap::from([("namespace".into(), "default".into()), ("pod".into(), "web".into())]),
                }],
                ..Default::default()
            },
        )
    }

    #[test]
    fn usage_rows_per_pool_and_block() {
        let t = usage_table(
            &[pool("10.0.0.0/23")],
            &[block("10.0.1.0/26", 3, 64), block("10.0.0.0/25", 78, 128), block("10.9.0.0/26", 1, 64)],
            true,
        );
        assert_eq!(
            t.rows,
            vec![
                vec!["IP Pool", "10.0.0.0/23", "512", "81 (16%)", "431 (84%)"],
                vec!["Block", "10.0.0.0/25", "128", "78 (61%)", "50 (39%)"],
                vec!["Block", "10.0.1.0/26", "64", "3 (5%)", "61 (95%)"],
            ]
        );
        assert_eq!(usage_table(&[pool("10.0.0.0/23")], &[], false).rows.len(), 1);
    }

    #[test]
    fn who_holds_an_address() {
        let pools = [pool("10.0.0.0/16")];
        let blocks = [block("10.0.1.0/26", 2, 64)];
        let held = describe_ip("10.0.1.1".parse().unwrap(), &pools, &blocks, &[]);
        assert!(held.starts_with("IP 10.0.1.1 is in use\n"), "{held}");
        assert!(held.contains("  handle:    h\n"), "{held}");
        assert!(held.contains("  pod:       web\n"), "{held}");
        let free = describe_ip("10.0.1.9".parse().unwrap(), &pools, &blocks, &[]);
        assert_eq!(free, "IP 10.0.1.9 is not assigned (pool p, block 10.0.1.0/26 of host:n1)\n");
        assert_eq!(
            describe_ip("192.0.2.1".parse().unwrap(), &pools, &blocks, &[]),
            "IP 192.0.2.1 is not in any Tabby IP pool\n"
        );
        let squatter = serde_json::from_value::<Pod>(serde_json::json!({
            "metadata": {"name": "squat", "namespace": "x"},
            "status": {"podIP": "10.0.1.9", "podIPs": [{"ip": "10.0.1.9"}]}
        }))
        .unwrap();
        let used = describe_ip("10.0.1.9".parse().unwrap(), &pools, &blocks, &[squatter]);
        assert!(
            used.ends_with("but pod x/squat uses it: its allocation is missing (run kubectl tabby ipam check)\n"),
            "{used}"
        );
    }

    #[test]
    fn leaks_agree_with_the_shared_table() {
        for case in tabby_testkit::cases::leak_cases() {
            let s = objects_snapshot(&case.pools(), case.blocks(), case.pods(), case.nodes.clone());
            let mut leaked: Vec<IpAddr> = check::check(&s)
                .into_iter()
                .filter(|p| p.kind.is_leak())
                .filter_map(|p| p.ip.and_then(|ip| ip.parse().ok()))
                .collect();
            leaked.sort();
            let mut want = case.leaked.clone();
            want.sort();
            assert_eq!(leaked, want, "{}", case.name);
        }
    }
}
