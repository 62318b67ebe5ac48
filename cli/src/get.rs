//! `get TYPE [NAME] [-o wide|yaml|json]`.

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tabby_api::ipam::block;
use tabby_api::policy::{GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, Tier};
use tabby_api::{BGPConfiguration, BGPPeer, BlockAffinity, IPAMBlock, IPPool, NodeStatus};

use crate::args::{GetArgs, OutputFormat};
use crate::cluster::{Cluster, Kind};
use crate::columns::{self, ResourceType};
use crate::error::{Error, Result};
use crate::table::Table;
use crate::{neat, output, wep};

/// Runs `get`.
pub async fn run(cluster: &Cluster, args: &GetArgs) -> Result<()> {
    let rt = ResourceType::parse(&args.resource)?;
    let (name, out) = (args.name.as_deref(), args.output);
    match rt {
        ResourceType::IPPool => objects::<IPPool>(cluster, rt, name, out, columns::ippools).await,
        ResourceType::IPAMBlock => objects::<IPAMBlock>(cluster, rt, name, out, columns::ipamblocks).await,
        ResourceType::BlockAffinity => objects::<BlockAffinity>(cluster, rt, name, out, columns::blockaffinities).await,
        ResourceType::BGPConfiguration => {
            objects::<BGPConfiguration>(cluster, rt, name, out, columns::bgpconfigs).await
        }
        ResourceType::BGPPeer => objects::<BGPPeer>(cluster, rt, name, out, columns::bgppeers).await,
        ResourceType::NodeStatus => {
            let now = Timestamp::now();
            objects::<NodeStatus>(cluster, rt, name, out, |items, wide| columns::nodestatuses(items, wide, now)).await
        }
        ResourceType::WorkloadEndpoint => workload_endpoints(cluster, name, out).await,
        ResourceType::NetworkPolicy => network_policies(cluster, name, out).await,
        ResourceType::GlobalNetworkPolicy => {
            objects::<GlobalNetworkPolicy>(cluster, rt, name, out, columns::globalnetworkpolicies).await
        }
        ResourceType::Tier => objects::<Tier>(cluster, rt, name, out, columns::tiers).await,
        ResourceType::GlobalNetworkSet => {
            objects::<GlobalNetworkSet>(cluster, rt, name, out, columns::globalnetworksets).await
        }
    }
}

async fn objects<K: Kind>(
    cluster: &Cluster,
    rt: ResourceType,
    name: Option<&str>,
    out: Option<OutputFormat>,
    table: impl Fn(&[K], bool) -> Table,
) -> Result<()> {
    let mut items = match name {
        Some(n) => vec![cluster.get::<K>(n).await?.ok_or_else(|| Error::ObjectNotFound {
            kind: rt.kind(),
            name: n.to_string(),
            resource: rt.cli_name(),
        })?],
        None => cluster.list::<K>().await?,
    };
    items.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    match out {
        Some(OutputFormat::Yaml | OutputFormat::Json) => {
            let values = items
                .iter()
                .map(|o| serde_json::to_value(o).map(neat::neat).map_err(|e| Error::Output(e.to_string())))
                .collect::<Result<Vec<Value>>>()?;
            emit(values, out)
        }
        _ if items.is_empty() => {
            output::note("No resources found.");
            Ok(())
        }
        _ => {
            output::print(&table(&items, out == Some(OutputFormat::Wide)).plain());
            Ok(())
        }
    }
}

/// One object as itself; several as a stream of documents (YAML `---`, JSON one object after another), which
/// `kubectl apply -f` takes. Not a `kind: List`: kubectl validates List items on the client, and its
/// validation rejects the null entries of IPAMBlock allocations.
fn emit(values: Vec<Value>, out: Option<OutputFormat>) -> Result<()> {
    let mut text = String::new();
    for (i, value) in values.iter().enumerate() {
        if out == Some(OutputFormat::Json) {
            text.push_str(&output::json(value)?);
        } else {
            if i > 0 {
                text.push_str("---\n");
            }
            text.push_str(&output::yaml(value)?);
        }
    }
    output::print(&text);
    Ok(())
}

/// Tabby NetworkPolicies of the namespace (`-n`, else the context's) or of all (`-A`).
async fn network_policies(cluster: &Cluster, name: Option<&str>, out: Option<OutputFormat>) -> Result<()> {
    let all = cluster.all_namespaces;
    let mut items: Vec<NetworkPolicy> = cluster
        .list::<NetworkPolicy>()
        .await?
        .into_iter()
        .filter(|p| all || p.metadata.namespace.as_deref() == Some(cluster.namespace.as_str()))
        .filter(|p| name.is_none_or(|n| p.metadata.name.as_deref() == Some(n)))
        .collect();
    if let Some(n) = name
        && items.is_empty()
    {
        return Err(Error::ObjectNotFound { kind: "NetworkPolicy", name: n.to_string(), resource: "networkpolicy" });
    }
    items.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    match out {
        Some(OutputFormat::Yaml | OutputFormat::Json) => {
            let values = items
                .iter()
                .map(|o| serde_json::to_value(o).map(neat::neat).map_err(|e| Error::Output(e.to_string())))
                .collect::<Result<Vec<Value>>>()?;
            emit(values, out)
        }
        _ if items.is_empty() => {
            let scope = if all { String::new() } else { format!(" in {} namespace", cluster.namespace) };
            output::note(&format!("No resources found{scope}."));
            Ok(())
        }
        _ => {
            output::print(&columns::networkpolicies(&items, out == Some(OutputFormat::Wide), all).plain());
            Ok(())
        }
    }
}

async fn workload_endpoints(cluster: &Cluster, name: Option<&str>, out: Option<OutputFormat>) -> Result<()> {
    let pools: Vec<IpNet> =
        cluster.list::<IPPool>().await?.iter().filter_map(|p| block::parse_cidr(&p.spec.cidr)).collect();
    let blocks: Vec<_> = cluster.list::<IPAMBlock>().await?.into_iter().map(|b| b.spec).collect();
    let mut pods = cluster.pods(cluster.all_namespaces).await?;
    if let Some(n) = name {
        pods.retain(|p| p.metadata.name.as_deref() == Some(n));
    }
    let weps = wep::derive(&pods, &pools, &blocks);
    if let Some(n) = name
        && weps.is_empty()
    {
        return Err(Error::ObjectNotFound {
            kind: "WorkloadEndpoint",
            name: n.to_string(),
            resource: "workloadendpoint",
        });
    }
    match out {
        Some(OutputFormat::Yaml | OutputFormat::Json) => {
            // A derived, read-only view: there is no WorkloadEndpoint object to apply.
            let values = weps
                .iter()
                .map(|w| {
                    json!({
                        "apiVersion": "tabby.dev/v1",
                        "kind": "WorkloadEndpoint",
                        "metadata": {"name": w.pod, "namespace": w.namespace},
                        "spec": {"node": w.node, "networks": w.networks, "interfaceName": w.interface, "handles": w.handles},
                    })
                })
                .collect();
            emit(values, out)
        }
        _ if weps.is_empty() => {
            let scope =
                if cluster.all_namespaces { String::new() } else { format!(" in {} namespace", cluster.namespace) };
            output::note(&format!("No resources found{scope}."));
            Ok(())
        }
        _ => {
            let wide = out == Some(OutputFormat::Wide);
            output::print(&columns::workloadendpoints(&weps, cluster.all_namespaces, wide).plain());
            Ok(())
        }
    }
}
