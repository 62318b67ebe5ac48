//! `node status [NODE]`: the agent's state and BGP sessions, from the node's NodeStatus.

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use tabby_api::nodestatus::BgpPeerStatus;
use tabby_api::{NodeStatus, condition};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::table::Table;
use crate::{output, timefmt};

/// A NodeStatus older than this means the agent is not running (it reports far more often).
pub const STALE_AFTER_SECS: i64 = 300;

/// The node to show when none is named: `$NODENAME`, then the host name.
fn default_candidates() -> Vec<(String, &'static str)> {
    let mut names = Vec::new();
    if let Ok(n) = std::env::var(tabby_api::agentenv::NODENAME)
        && !n.is_empty()
    {
        names.push((n, "$NODENAME"));
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_string();
        if !h.is_empty() && !names.iter().any(|(n, _)| *n == h) {
            names.push((h, "the hostname"));
        }
    }
    names
}

/// Runs `node status`.
pub async fn status(cluster: &Cluster, node: Option<&str>) -> Result<()> {
    let candidates = match node {
        Some(n) => vec![(n.to_string(), "the argument")],
        None => default_candidates(),
    };
    for (name, _) in &candidates {
        if let Some(ns) = cluster.get::<NodeStatus>(name).await? {
            output::print(&render(&ns, Timestamp::now(), &TimeZone::system()));
            return Ok(());
        }
    }
    let mut existing: Vec<String> =
        cluster.list::<NodeStatus>().await?.iter().filter_map(|n| n.metadata.name.clone()).collect();
    if existing.is_empty() {
        cluster.require_installation().await?;
    }
    existing.sort();
    let known = if existing.is_empty() {
        "No node has a NodeStatus yet: is the agent running? kubectl -n tabby-system get pods -o wide".to_string()
    } else {
        format!(
            "Nodes with a NodeStatus: {}.\nName one: kubectl tabby node status {}",
            existing.join(", "),
            existing[0]
        )
    };
    match node {
        Some(n) => {
            let nodes = cluster.node_names().await?;
            let what = if nodes.iter().any(|x| x == n) {
                format!(
                    "the node exists but its Tabby agent has not reported (kubectl -n tabby-system get pods -o wide --field-selector spec.nodeName={n}).\n{known}"
                )
            } else {
                format!("there is no such node and no NodeStatus for it.\n{known}")
            };
            Err(Error::NodeNotFound { node: n.to_string(), detail: what })
        }
        None => {
            let tried: Vec<String> = candidates.iter().map(|(n, from)| format!("{n} ({from})")).collect();
            let tried = if tried.is_empty() { "no $NODENAME and no hostname".into() } else { tried.join(", ") };
            Err(Error::NodeNotFound {
                node: candidates.first().map(|(n, _)| n.clone()).unwrap_or_default(),
                detail: format!("no NodeStatus for {tried}.\n{known}"),
            })
        }
    }
}

/// Whether the agent runs, in one sentence.
pub fn process_line(ns: &NodeStatus, now: Timestamp) -> String {
    let st = ns.status.clone().unwrap_or_default();
    let Some(beat) = st.last_heartbeat.as_deref().and_then(timefmt::parse) else {
        return "Tabby process has not reported yet (its NodeStatus has no heartbeat).".into();
    };
    let ago = timefmt::elapsed(beat, now).as_secs();
    if ago > STALE_AFTER_SECS {
        return format!("Tabby process is not running: its last report was {} ago ({beat}).", timefmt::age(beat, now));
    }
    match condition::find(&st.conditions, condition::READY) {
        Some(c) if c.status != "True" => {
            format!("Tabby process is running, but the node is not ready: {}: {}", c.reason, c.message)
        }
        _ => "Tabby process is running.".into(),
    }
}

/// calicoctl's STATE column: `up` for an established session, else `start` (connecting) or `down`.
fn state(p: &BgpPeerStatus) -> &'static str {
    match p.state.as_str() {
        "Established" => "up",
        "Idle" => "down",
        _ => "start",
    }
}

fn peers_section(family: &str, peers: &[BgpPeerStatus], now: Timestamp, tz: &TimeZone) -> String {
    let mut out = format!("{family} BGP status\n");
    if peers.is_empty() {
        out.push_str(&format!("No {family} peers found.\n"));
        return out;
    }
    let mut t = Table::new(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]);
    for p in peers {
        let since = p.since.as_deref().and_then(timefmt::parse).map(|s| timefmt::since(s, now, tz));
        let info = match p.info.as_deref().filter(|i| !i.is_empty()) {
            Some(i) => format!("{} {i}", p.state),
            None => p.state.clone(),
        };
        t.push([
            p.peer_ip.clone(),
            p.type_.describe().to_string(),
            state(p).to_string(),
            since.unwrap_or_default(),
            info,
        ]);
    }
    out.push_str(&t.bordered(&[]));
    out
}

/// The whole `node status` text.
pub fn render(ns: &NodeStatus, now: Timestamp, tz: &TimeZone) -> String {
    let bgp = ns.status.as_ref().and_then(|s| s.bgp.clone()).unwrap_or_default();
    format!(
        "{}\n\n{}\n{}\n",
        process_line(ns, now),
        peers_section("IPv4", &bgp.peers_v4, now, tz),
        peers_section("IPv6", &bgp.peers_v6, now, tz)
    )
}

#[cfg(test)]
mod tests {
    use tabby_api::nodestatus::{BgpStatus, PeerType};
    use tabby_api::{NodeStatusSpec, NodeStatusStatus};

    use super::*;

    fn status(beat: &str, peers: Vec<BgpPeerStatus>) -> NodeStatus {
        let mut ns = NodeStatus::new("n1", NodeStatusSpec { node: "n1".into() });
        ns.status = Some(NodeStatusStatus {
            last_heartbeat: Some(beat.into()),
            bgp: Some(BgpStatus { peers_established: 1, peers_v4: peers, peers_v6: vec![] }),
            ..Default::default()
        });
        ns
    }

    #[test]
    fn renders_like_calicoctl() {
        let now = timefmt::parse("2026-03-04T10:00:00Z").unwrap();
        let peer = BgpPeerStatus {
            peer_ip: "192.168.100.101".into(),
            type_: PeerType::NodeMesh,
            state: "Established".into(),
            since: Some("2026-03-04T08:27:05Z".into()),
            info: None,
        };
        let text = render(&status("2026-03-04T09:59:50Z", vec![peer]), now, &TimeZone::UTC);
        assert_eq!(
            text,
            "Tabby process is running.\n\
             \n\
             IPv4 BGP status\n\
             +-----------------+-------------------+-------+----------+-------------+\n\
             |  PEER ADDRESS   |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n\
             +-----------------+-------------------+-------+----------+-------------+\n\
             | 192.168.100.101 | node-to-node mesh | up    | 08:27:05 | Established |\n\
             +-----------------+-------------------+-------+----------+-------------+\n\
             \n\
             IPv6 BGP status\n\
             No IPv6 peers found.\n\
             \n"
        );
        let stale = render(&status("2026-03-04T09:00:00Z", vec![]), now, &TimeZone::UTC);
        assert!(stale.starts_with("Tabby process is not running: its last report was 60m ago"), "{stale}");
        assert!(stale.contains("No IPv4 peers found."));
    }
}
