//! The one shape of every subsystem of the node's network, and the runner that drives it.
//!
//! A [`Reconciler`] says what it wants from the facts ([`Reconciler::desired`], pure), brings the node
//! there ([`Reconciler::apply`], I/O; the diff against the kernel or the API is a pure function in its
//! module), and removes what it put on the node ([`Reconciler::teardown`], `tabby-agent cleanup`).
//! [`Slot`] runs one reconciler in a pass and owns what every subsystem used to do by hand: it skips
//! `apply` when the desired state equals the last one applied and no resync is due, times each apply
//! (one `tabby_agent_reconcile_*{subsystem}` family), counts its errors, and collects its [`Problem`] into
//! the pass's [`Local`], from which NodeStatus reports it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tabby_api::nodestatus::BgpStatus;

use crate::facts::Snapshot;
use crate::kernel::{Iface, Kernel, source_towards};

/// Why a subsystem cannot do its part on this node, reported as a NodeStatus condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The condition it makes False.
    pub condition: Condition,
    /// The condition's reason (`IPIPUnavailable`, `ForwardingDisabled`, `VXLANFailed`, `NATFailed`).
    pub reason: &'static str,
    pub message: String,
}

/// The NodeStatus conditions a problem can make False (each also makes `Ready` False).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The node's routing and packet handling: routes, devices, NAT.
    Routes,
}

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Changes made (0: the node already was as wanted).
    pub changes: usize,
    /// Some change could not be made (counted in `tabby_agent_reconcile_errors_total`, logged).
    pub error: Option<String>,
    /// Why the subsystem cannot work here, until it can (NodeStatus).
    pub problem: Option<Problem>,
}

impl Outcome {
    pub fn changed(changes: usize) -> Outcome {
        Outcome { changes, ..Outcome::default() }
    }

    /// A failure: counted, and reported on NodeStatus as `condition` False with `reason`.
    pub fn failed(condition: Condition, reason: &'static str, message: String) -> Outcome {
        Outcome { changes: 0, error: Some(message.clone()), problem: Some(Problem { condition, reason, message }) }
    }
}

/// What one pass learns as it goes: the local facts read once at its start, and what earlier
/// reconcilers found for later ones (the node's addresses and MTU, tunnel annotations, problems).
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The interfaces, read once per pass.
    pub ifaces: Vec<Iface>,
    /// Why they could not be read (then `ifaces` is empty and means nothing).
    pub ifaces_error: Option<String>,
    /// The source addresses the kernel picks towards the can-reach destinations (IPv4, IPv6).
    pub reach: (Option<IpAddr>, Option<IpAddr>),
    /// `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding` as read (`None`: unreadable).
    pub forwarding: (Option<String>, Option<String>),
    pub addr_v4: Option<IpNet>,
    pub addr_v6: Option<IpNet>,
    /// The pod MTU.
    pub mtu: u32,
    /// Node annotations to publish (`None` removes one).
    pub annotations: BTreeMap<String, Option<String>>,
    /// BGP sessions, when the speaker runs.
    pub bgp: Option<BgpStatus>,
    pub bgp_ready: bool,
    /// Every problem of this pass, in the order of the reconcilers.
    pub problems: Vec<Problem>,
}

impl Local {
    /// What a pass reads of the node itself, once: the interfaces, the source addresses towards the
    /// can-reach destinations `reach` (IPv4, IPv6), and the forwarding switches.
    pub async fn gather(kernel: &Kernel, reach: (Option<&str>, Option<&str>)) -> Local {
        let (ifaces, ifaces_error) = match kernel.interfaces().await {
            Ok(i) => (i, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let src = |d: Option<&str>, v6: bool| d.and_then(source_towards).filter(|ip: &IpAddr| ip.is_ipv6() == v6);
        Local {
            ifaces,
            ifaces_error,
            reach: (src(reach.0, false), src(reach.1, true)),
            forwarding: crate::forwarding::read(),
            bgp_ready: true,
            ..Local::default()
        }
    }
}

/// One slice of the node's state.
// The list of reconcilers is fixed and concrete (no `dyn`): whether a pass's future is `Send` is checked
// where it is spawned, so the trait needs no `Send` bounds on its futures.
#[allow(async_fn_in_trait)]
pub trait Reconciler {
    /// The `subsystem` label of its metrics, and its name in logs.
    const NAME: &'static str;
    type Desired: PartialEq + Clone;

    /// Pure: what the facts and what earlier reconcilers of the pass found ask for.
    fn desired(&self, facts: &Snapshot, local: &Local) -> Self::Desired;

    /// I/O: makes the node so; may leave what later reconcilers need in `local`.
    async fn apply(&mut self, want: &Self::Desired, local: &mut Local) -> Outcome;

    /// How long an applied desired state is trusted before it is applied again although it did not
    /// change; zero (the default): applied on every pass (the kernel is re-read each time).
    fn resync(&self) -> Duration {
        Duration::ZERO
    }

    /// Removes what this subsystem put on the node (`tabby-agent cleanup`); says what it removed.
    async fn teardown(&mut self) -> Result<Removed, TeardownError> {
        Ok(Removed::default())
    }
}

/// What teardowns removed from the node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub routes: usize,
    pub links: Vec<String>,
    /// tunl0 was in service and is now down without an address (or deleted, if Tabby had added it).
    pub tunl0_cleared: bool,
    pub nft_table: bool,
    pub files: Vec<std::path::PathBuf>,
}

impl Removed {
    pub fn add(&mut self, other: Removed) {
        self.routes += other.routes;
        self.links.extend(other.links);
        self.tunl0_cleared |= other.tunl0_cleared;
        self.nft_table |= other.nft_table;
        self.files.extend(other.files);
    }
}

/// A teardown that could not finish.
#[derive(Debug, thiserror::Error)]
#[error("{subsystem}: {message}")]
pub struct TeardownError {
    pub subsystem: &'static str,
    pub message: String,
}

impl TeardownError {
    pub fn new(subsystem: &'static str, e: impl std::fmt::Display) -> TeardownError {
        TeardownError { subsystem, message: e.to_string() }
    }
}

/// A reconciler with the runner's memory of it: the last desired state applied without error, when, and
/// the problem it reported then (reported again while the state stands).
pub struct Slot<R: Reconciler> {
    pub r: R,
    last: Option<(R::Desired, Instant, Option<Problem>)>,
}

impl<R: Reconciler> Slot<R> {
    pub fn new(r: R) -> Slot<R> {
        Slot { r, last: None }
    }

    /// One pass of the reconciler: desired, then (unless nothing is due) a timed apply whose error is
    /// counted and logged and whose problem joins `local.problems`. Returns its name and how long the
    /// whole step took (desired and apply).
    pub async fn step(&mut self, facts: &Snapshot, local: &mut Local) -> (&'static str, Duration) {
        let begun = Instant::now();
        let want = self.r.desired(facts, local);
        let resync = self.r.resync();
        let due = resync.is_zero() || self.last.as_ref().is_none_or(|(w, at, _)| *w != want || at.elapsed() >= resync);
        if !due {
            local.problems.extend(self.last.as_ref().and_then(|(_, _, p)| p.clone()));
            return (R::NAME, begun.elapsed());
        }
        let started = Instant::now();
        let out = self.r.apply(&want, local).await;
        observe(R::NAME, started, out.error.is_none());
        match &out.error {
            Some(e) => {
                tracing::warn!(subsystem = R::NAME, error = %e, "reconcile failed");
                // Tried again on the next pass.
                self.last = None;
            }
            None => {
                if out.changes > 0 {
                    tracing::debug!(subsystem = R::NAME, changes = out.changes, "reconciled");
                }
                self.last = Some((want, Instant::now(), out.problem.clone()));
            }
        }
        local.problems.extend(out.problem);
        (R::NAME, begun.elapsed())
    }
}

/// Records one reconcile of `subsystem` that started at `started` (for the subsystems with loops of their
/// own: the route writer, IPAM's block keeper and garbage collector).
pub fn observe(subsystem: &'static str, started: Instant, ok: bool) {
    crate::metrics::reconcile_done(subsystem, started.elapsed(), ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        applies: usize,
        fail: bool,
        resync: Duration,
    }

    impl Reconciler for Counter {
        const NAME: &'static str = "test-counter";
        type Desired = u32;

        fn desired(&self, _: &Snapshot, local: &Local) -> u32 {
            local.mtu
        }

        async fn apply(&mut self, _: &u32, _: &mut Local) -> Outcome {
            self.applies += 1;
            if self.fail {
                Outcome::failed(Condition::Routes, "TestFailed", "broken".into())
            } else {
                Outcome::changed(1)
            }
        }

        fn resync(&self) -> Duration {
            self.resync
        }
    }

    #[tokio::test]
    async fn applies_when_due_and_reports_problems() {
        let facts = Snapshot::default();
        let mut local = Local { mtu: 1500, ..Local::default() };
        let mut s = Slot::new(Counter { applies: 0, fail: false, resync: Duration::from_secs(3600) });
        s.step(&facts, &mut local).await;
        s.step(&facts, &mut local).await;
        assert_eq!(s.r.applies, 1, "unchanged and no resync due: skipped");
        local.mtu = 1450;
        s.step(&facts, &mut local).await;
        assert_eq!(s.r.applies, 2, "changed: applied");
        // A failure is retried on the next pass, and its problem reported.
        s.r.fail = true;
        local.mtu = 1400;
        s.step(&facts, &mut local).await;
        s.step(&facts, &mut local).await;
        assert_eq!(s.r.applies, 4);
        assert_eq!(local.problems.len(), 2);
        assert_eq!(local.problems[0].reason, "TestFailed");
        // Zero resync: every pass.
        let mut every = Slot::new(Counter { applies: 0, fail: false, resync: Duration::ZERO });
        every.step(&facts, &mut local).await;
        every.step(&facts, &mut local).await;
        assert_eq!(every.r.applies, 2);
        let m = crate::metrics::encode();
        assert!(m.contains(r#"tabby_agent_reconcile_errors_total{subsystem="test-counter"} 2"#), "{m}");
    }
}
