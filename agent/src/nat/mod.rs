//! NAT outgoing: in table `inet tabby`, interval sets `pools4`/`pools6` (every pool) and `masq4`/`masq6`
//! (pools with natOutgoing), and a `postrouting` nat chain that masquerades traffic from the `masq` pools to
//! destinations outside every pool (pod-to-pod keeps pod addresses).
//!
//! The NAT section of the table's one writer ([`crate::kernel::nft`]): what the pools want ([`desired`],
//! pure) becomes a [`Section`] ([`section`], pure), and the writer applies only what changed — set
//! elements, or the chain refilled when its rules differ — in one transaction. A pool change never
//! rewrites rules.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tabby_api::ipam::IPPool;

use crate::facts::Snapshot;
use crate::kernel::nft::{Chain, Element, Hook, Nft, Section, Set};
use crate::reconcile::{Condition, Local, Outcome, Reconciler, Removed, TeardownError};

/// NodeStatus RoutesReady reason while NAT outgoing cannot be programmed.
pub const REASON_FAILED: &str = "NATOutgoingFailed";

/// The names of the NAT section in table `inet tabby`.
const SETS: [(&str, &str); 4] =
    [("pools4", "ipv4_addr"), ("pools6", "ipv6_addr"), ("masq4", "ipv4_addr"), ("masq6", "ipv6_addr")];
const CHAIN: &str = "postrouting";

/// The sets the table holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NatState {
    /// Every pool (destinations that are never masqueraded).
    pub pools4: BTreeSet<IpNet>,
    pub pools6: BTreeSet<IpNet>,
    /// Pools with natOutgoing (sources that are masqueraded).
    pub masq4: BTreeSet<IpNet>,
    pub masq6: BTreeSet<IpNet>,
}

/// What the pools ask for.
pub fn desired<P: std::borrow::Borrow<IPPool>>(pools: &[P]) -> NatState {
    let mut s = NatState::default();
    for p in pools.iter().map(std::borrow::Borrow::borrow) {
        let Ok(c) = p.spec.cidr.parse::<IpNet>() else { continue };
        let c = c.trunc();
        let v6 = c.addr().is_ipv6();
        if v6 { &mut s.pools6 } else { &mut s.pools4 }.insert(c);
        if p.spec.nat_outgoing && !p.spec.disabled {
            if v6 { &mut s.masq6 } else { &mut s.masq4 }.insert(c);
        }
    }
    s
}

fn owns(name: &str) -> bool {
    name == CHAIN || SETS.iter().any(|(n, _)| *n == name)
}

/// The NAT section of table `inet tabby` for `want`.
pub fn section(want: &NatState) -> Section {
    let elements = |s: &BTreeSet<IpNet>| Arc::new(s.iter().map(|n| Element::net(*n)).collect());
    let sets = [&want.pools4, &want.pools6, &want.masq4, &want.masq6];
    Section {
        owner: "nat",
        sets: SETS
            .iter()
            .zip(sets)
            .map(|((name, ty), s)| Set {
                name: name.to_string(),
                ty: ty.to_string(),
                interval: true,
                map: None,
                elements: elements(s),
            })
            .collect(),
        chains: vec![Arc::new(Chain {
            name: CHAIN.into(),
            hook: Some(Hook { ty: "nat".into(), hook: "postrouting".into(), priority: 100, policy: "accept".into() }),
            rules: vec![
                "ip saddr @masq4 ip daddr != @pools4 masquerade".into(),
                "ip6 saddr @masq6 ip6 daddr != @pools6 masquerade".into(),
            ],
        })],
        owns,
    }
}

/// The writer of table `inet tabby`, shared by its owners.
pub type SharedNft = Arc<Mutex<Nft>>;

/// The NAT outgoing reconciler.
pub struct Nat {
    nft: SharedNft,
    resync: Duration,
}

impl Nat {
    /// NAT through `nft`, re-checked against the kernel every `resync` even when the pools did not change.
    pub fn new(nft: SharedNft, resync: Duration) -> Nat {
        Nat { nft, resync }
    }

    async fn with_nft<T: Send + 'static>(&self, job: impl FnOnce(&mut Nft) -> T + Send + 'static) -> Result<T, String> {
        let nft = self.nft.clone();
        // `nft` is a process: run it off the async workers.
        tokio::task::spawn_blocking(move || job(&mut nft.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| format!("NAT task: {e}"))
    }
}

impl Reconciler for Nat {
    const NAME: &'static str = "nat";
    type Desired = NatState;

    fn desired(&self, facts: &Snapshot, _: &Local) -> NatState {
        desired(&facts.pools)
    }

    async fn apply(&mut self, want: &NatState, _: &mut Local) -> Outcome {
        let s = section(want);
        match self
            .with_nft(move |n| {
                // What the writer knows is read back from the kernel every resync, off this path
                // (kernel::nft::verify): this commit repairs anything changed by hand since.
                n.stage(s);
                n.commit()
            })
            .await
        {
            Ok(Ok(0)) => Outcome::default(),
            Ok(Ok(n)) => {
                tracing::info!(changes = n, "nftables table tabby updated");
                Outcome::changed(n)
            }
            Ok(Err(e)) => Outcome::failed(Condition::Routes, REASON_FAILED, format!("programming NAT outgoing: {e}")),
            Err(e) => Outcome::failed(Condition::Routes, REASON_FAILED, e),
        }
    }

    fn resync(&self) -> Duration {
        self.resync
    }

    async fn teardown(&mut self) -> Result<Removed, TeardownError> {
        let gone = self.with_nft(|n| {
            n.stage(section(&NatState::default()));
            n.teardown("nat")
        });
        match gone.await {
            Ok(Ok(t)) => Ok(Removed { nft_table: t, ..Removed::default() }),
            Ok(Err(e)) => Err(TeardownError::new(Self::NAME, e)),
            Err(e) => Err(TeardownError::new(Self::NAME, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::nft::{Current, CurrentChain, CurrentSet, plan, rule_hash};

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The kernel after `want` was applied.
    fn applied(want: &NatState) -> Current {
        let s = section(want);
        Current {
            sets: s
                .sets
                .iter()
                .map(|x| {
                    (
                        x.name.clone(),
                        CurrentSet { ty: x.ty.clone(), interval: true, map: None, elements: x.elements.clone() },
                    )
                })
                .collect(),
            chains: s
                .chains
                .iter()
                .map(|c| {
                    let rules = c.rules.iter().map(|r| Some(rule_hash(r))).collect();
                    (c.name.clone(), CurrentChain { hook: c.hook.clone(), rules })
                })
                .collect(),
        }
    }

    #[test]
    fn fresh_table_is_built_in_one_batch() {
        let want = NatState { pools4: nets(&["10.0.0.0/16"]), masq4: nets(&["10.0.0.0/16"]), ..Default::default() };
        let b = plan(None, &[section(&want)]).render();
        assert!(b.starts_with("add table inet tabby\n"));
        assert!(
            b.contains("add chain inet tabby postrouting { type nat hook postrouting priority 100; policy accept; }")
        );
        assert!(b.contains("ip saddr @masq4 ip daddr != @pools4 masquerade"));
        assert!(b.contains("add element inet tabby pools4 { 10.0.0.0/16 }"));
        assert!(b.contains("add element inet tabby masq4 { 10.0.0.0/16 }"));
        assert!(!b.contains("pools6 {  }"));
    }

    #[test]
    fn only_changes_are_sent() {
        let cur = NatState {
            pools4: nets(&["10.0.0.0/16", "10.1.0.0/16"]),
            masq4: nets(&["10.0.0.0/16"]),
            ..Default::default()
        };
        let have = applied(&cur);
        assert!(plan(Some(&have), &[section(&cur)]).is_empty());
        let want = NatState {
            pools4: nets(&["10.0.0.0/16", "10.2.0.0/16"]),
            masq4: nets(&["10.0.0.0/16"]),
            ..Default::default()
        };
        assert_eq!(
            plan(Some(&have), &[section(&want)]).render(),
            "delete element inet tabby pools4 { 10.1.0.0/16 }\nadd element inet tabby pools4 { 10.2.0.0/16 }\n"
        );
        let mut broken = have.clone();
        broken.chains.get_mut(CHAIN).unwrap().rules.clear();
        assert!(plan(Some(&broken), &[section(&cur)]).render().contains("flush chain inet tabby postrouting"));
        // The rules an older agent wrote (no comments) are replaced once.
        let mut old = have;
        old.chains.get_mut(CHAIN).unwrap().rules = vec![None, None];
        assert!(plan(Some(&old), &[section(&cur)]).render().starts_with("flush chain inet tabby postrouting\n"));
    }

    #[test]
    fn pools_decide_the_sets() {
        let pool = |cidr: &str, nat: bool, disabled: bool| -> IPPool {
            let mut p: IPPool = serde_json::from_value(serde_json::json!({
                "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": cidr}
            }))
            .unwrap();
            p.spec.nat_outgoing = nat;
            p.spec.disabled = disabled;
            p
        };
        let s = desired(&[
            pool("10.0.0.7/16", true, false),
            pool("fd00::/48", true, true),
            pool("10.9.0.0/16", false, false),
        ]);
        assert_eq!(s.pools4, nets(&["10.0.0.0/16", "10.9.0.0/16"]));
        assert_eq!(s.masq4, nets(&["10.0.0.0/16"]));
        assert_eq!((s.pools6.len(), s.masq6.len()), (1, 0), "a disabled pool is never masqueraded");
    }
}
