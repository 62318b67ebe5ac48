//! The operator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Counters and timings of reconciles and API writes.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_duration: Histogram,
    pub writes: Family<KindLabel, Counter>,
    pub leader: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            writes: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("tabby_operator");
        r.register("reconciles", "Reconciles of the Installation", m.reconciles.clone());
        r.register("reconcile_errors", "Reconciles that failed", m.reconcile_errors.clone());
        r.register("reconcile_duration_seconds", "How long a reconcile took", m.reconcile_duration.clone());
        r.register("api_writes", "Objects created, updated or deleted, by kind", m.writes.clone());
        r.register("leader", "1 while this replica is the leader", m.leader.clone());
        m
    }

    pub fn wrote(&self, kind: &str) {
        self.writes.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
    }
}
