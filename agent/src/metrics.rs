//! The agent's Prometheus metrics (docs/metrics.md), in one process-wide registry served on `/metrics`.
//!
//! A leaf: it knows the API's status types and nothing of the agent. Subsystems report with one line:
//! [`reconcile_done`] after each reconcile pass. The node's state (BGP peers by state, routes by kind) is
//! fed from the status snapshot by [`observe_status`], which the status reporter calls on every pass, and
//! IPAM allocations are counted on each scrape from the source set with [`set_ipam_source`], so no
//! subsystem has to feed them.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use tabby_api::nodestatus::{BgpStatus, RouteCounts};
use tabby_obs::prometheus_client::collector::Collector;
use tabby_obs::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use tabby_obs::prometheus_client::metrics::counter::Counter;
use tabby_obs::prometheus_client::metrics::family::Family;
use tabby_obs::prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use tabby_obs::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tabby_obs::prometheus_client::registry::Registry;

/// BGP session states (RFC 4271), each reported even when no peer is in it.
pub const BGP_STATES: [&str; 6] = ["Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"];

/// Route kinds of `tabby_agent_routes`.
pub const ROUTE_KINDS: [&str; 3] = ["local", "blackhole", "remote"];

type Label = [(&'static str, &'static str); 1];
type HistogramFamily = Family<Label, Histogram, fn() -> Histogram>;

/// Allocations in use and blocks owned, read on each scrape.
type IpamSource = Box<dyn Fn() -> IpamCounts + Send + Sync>;

/// What the IPAM source reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpamCounts {
    /// Addresses allocated from this node's blocks.
    pub allocations: u64,
    /// Blocks with this node's affinity.
    pub blocks: u64,
}

/// Labels of a counted policy rule (direction, tier, policy, rule, action, staged).
pub type PolicyLabels = Vec<(String, String)>;

struct Metrics {
    policy_packets: Family<PolicyLabels, Counter>,
    policy_bytes: Family<PolicyLabels, Counter>,
    reconcile_duration: HistogramFamily,
    reconcile_errors: Family<Label, Counter>,
    bgp_peers: Family<Label, Gauge>,
    routes: Family<Label, Gauge>,
    ipam: OnceLock<IpamSource>,
}

fn reconcile_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 9))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    policy_packets: Family::default(),
    policy_bytes: Family::default(),
    reconcile_duration: Family::new_with_constructor(reconcile_histogram),
    reconcile_errors: Family::default(),
    bgp_peers: Family::default(),
    routes: Family::default(),
    ipam: OnceLock::new(),
});

/// Records one reconcile pass of `subsystem` (`nat`, `status`, `node`, `ipam`, `routes`, ...).
pub fn reconcile_done(subsystem: &'static str, elapsed: Duration, ok: bool) {
    let l = [("subsystem", subsystem)];
    METRICS.reconcile_duration.get_or_create(&l).observe(elapsed.as_secs_f64());
    let errors = METRICS.reconcile_errors.get_or_create(&l);
    if !ok {
        errors.inc();
    }
}

/// Updates the gauges fed from the status snapshot: BGP peers by state and routes by kind.
pub fn observe_status(bgp: Option<&BgpStatus>, routes: &RouteCounts) {
    let peers = bgp.iter().flat_map(|b| b.peers_v4.iter().chain(&b.peers_v6));
    let mut by_state = [0i64; BGP_STATES.len()];
    for p in peers {
        if let Some(i) = BGP_STATES.iter().position(|s| *s == p.state) {
            by_state[i] += 1;
        }
    }
    for (state, n) in BGP_STATES.iter().zip(by_state) {
        METRICS.bgp_peers.get_or_create(&[("state", *state)]).set(n);
    }
    let r = routes;
    for (kind, n) in ROUTE_KINDS.iter().zip([r.local, r.blackhole, r.remote]) {
        METRICS.routes.get_or_create(&[("kind", *kind)]).set(i64::from(n));
    }
}

/// Adds packets and bytes a policy rule counted (see `policy::counters`).
pub fn policy_counted(labels: PolicyLabels, packets: u64, bytes: u64) {
    METRICS.policy_packets.get_or_create(&labels).inc_by(packets);
    METRICS.policy_bytes.get_or_create(&labels).inc_by(bytes);
}

/// Sets where the IPAM gauges come from (once; later calls are ignored).
pub fn set_ipam_source(source: impl Fn() -> IpamCounts + Send + Sync + 'static) {
    let _ = METRICS.ipam.set(Box::new(source));
}

#[derive(Debug)]
struct IpamCollector;

impl Collector for IpamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = METRICS.ipam.get() else { return Ok(()) };
        let c = source();
        for (name, help, v) in [
            ("tabby_agent_ipam_allocations", "Addresses allocated from this node's IPAM blocks", c.allocations),
            ("tabby_agent_ipam_blocks", "IPAM blocks this node owns (affinity host:<node>)", c.blocks),
        ] {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

/// Adds the agent's metrics to `r` (the process-wide values; registering twice shows them twice).
pub fn register(r: &mut Registry) {
    let m = &*METRICS;
    r.register(
        "tabby_agent_reconcile_duration_seconds",
        "Time one reconcile pass of a subsystem took",
        m.reconcile_duration.clone(),
    );
    r.register(
        "tabby_agent_reconcile_errors",
        "Reconcile passes of a subsystem that failed (some change was not applied)",
        m.reconcile_errors.clone(),
    );
    r.register("tabby_agent_bgp_peers", "BGP sessions of this node by state", m.bgp_peers.clone());
    r.register(
        "tabby_agent_routes",
        "Routes Tabby programmed in the kernel by kind: local (to this node's pods), blackhole (this node's \
         blocks), remote (to other nodes' blocks, learned over BGP or computed for VXLAN/CrossSubnet)",
        m.routes.clone(),
    );
    r.register(
        "tabby_agent_policy_packets",
        "Packets a network policy rule matched, by direction, tier, policy, rule index and action (tier-deny: \
         a tier's end; unknown-interface: a pod interface the agent has not programmed; staged: would-be verdicts)",
        m.policy_packets.clone(),
    );
    r.register(
        "tabby_agent_policy_bytes",
        "Bytes of the packets in tabby_agent_policy_packets",
        m.policy_bytes.clone(),
    );
    r.register_collector(Box::new(IpamCollector));
}

/// The agent's metrics in the text format (what `/metrics` serves), for tests.
pub fn encode() -> String {
    let mut r = Registry::default();
    register(&mut r);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = tabby_obs::prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_api::nodestatus::BgpPeerStatus;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn status_snapshot_feeds_peers_routes_and_reconciles_count() {
        let peer = |s: &str| BgpPeerStatus { peer_ip: "192.0.2.1".into(), state: s.into(), ..Default::default() };
        let bgp = BgpStatus {
            peers_established: 2,
            peers_v4: vec![peer("Established"), peer("Established"), peer("Active")],
            peers_v6: vec![peer("Connect")],
        };
        observe_status(Some(&bgp), &RouteCounts { local: 7, remote: 3, blackhole: 2 });
        reconcile_done("test-a", Duration::from_millis(3), true);
        reconcile_done("test-a", Duration::from_millis(30), false);
        set_ipam_source(|| IpamCounts { allocations: 5, blocks: 1 });
        let t = encode();
        assert_eq!(value(&t, r#"tabby_agent_bgp_peers{state="Established"}"#), Some(2.0), "{t}");
        assert_eq!(value(&t, r#"tabby_agent_bgp_peers{state="Active"}"#), Some(1.0));
        assert_eq!(value(&t, r#"tabby_agent_bgp_peers{state="Connect"}"#), Some(1.0));
        assert_eq!(value(&t, r#"tabby_agent_bgp_peers{state="Idle"}"#), Some(0.0));
        assert_eq!(value(&t, r#"tabby_agent_routes{kind="local"}"#), Some(7.0));
        assert_eq!(value(&t, r#"tabby_agent_routes{kind="blackhole"}"#), Some(2.0));
        assert_eq!(value(&t, r#"tabby_agent_routes{kind="remote"}"#), Some(3.0));
        assert_eq!(value(&t, r#"tabby_agent_reconcile_duration_seconds_count{subsystem="test-a"}"#), Some(2.0));
        assert_eq!(value(&t, r#"tabby_agent_reconcile_errors_total{subsystem="test-a"}"#), Some(1.0));
        assert_eq!(value(&t, "tabby_agent_ipam_allocations"), Some(5.0));
        assert_eq!(value(&t, "tabby_agent_ipam_blocks"), Some(1.0));
        assert!(t.contains("# HELP tabby_agent_routes Routes Tabby programmed"), "{t}");
    }
}
