//! Per-rule packet counters: every policy rule, tier end and unknown-interface drop carries a counter;
//! this reads them from the kernel (one netlink dump of the table's rules, [`crate::kernel::nfnl`], every
//! few seconds, never after a write) and adds what they grew by to `tabby_agent_policy_packets_total` /
//! `_bytes_total`, labelled with the direction, tier, policy, rule and action the rule stands for
//! ([`super::render::Attr`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::Attribution;
use super::render::Attr;
use crate::kernel::nfnl::{self, RuleCounter};
use crate::kernel::nft::{TABLE, tag_hash};

/// The metric labels of a counted rule.
pub fn labels(a: &Attr) -> Vec<(String, String)> {
    vec![
        ("direction".into(), a.dir.as_str().into()),
        ("tier".into(), a.tier.clone()),
        ("policy".into(), a.policy.clone()),
        ("rule".into(), a.rule.map(|r| r.to_string()).unwrap_or_default()),
        ("action".into(), a.action.into()),
        ("staged".into(), a.staged.to_string()),
    ]
}

/// One read of the counters: adds what each counted rule grew by since the last read to the metrics.
/// Rules are known by handle (unique in a table: a refilled chain's rules are new handles, counted from
/// zero) and attributed by their chain and the hash in their comment.
pub struct Tally<'r> {
    by_tag: HashMap<(&'r str, u64), &'r Attr>,
    last: HashMap<u64, (u64, u64)>,
    next: HashMap<u64, (u64, u64)>,
}

impl<'r> Tally<'r> {
    /// A read against `attribution` (what the applied rules mean), `last` being the previous read's values.
    pub fn new(attribution: &'r BTreeMap<(String, u64), Attr>, last: HashMap<u64, (u64, u64)>) -> Tally<'r> {
        let by_tag = attribution.iter().map(|((chain, hash), a)| ((chain.as_str(), *hash), a)).collect();
        let next = HashMap::with_capacity(last.len());
        Tally { by_tag, last, next }
    }

    /// One rule's counter; rules that do not stand for a policy verdict are skipped.
    pub fn rule(&mut self, r: &RuleCounter) {
        let Some(tag) = r.comment.and_then(tag_hash) else { return };
        let Some(a) = self.by_tag.get(&(r.chain, tag)) else { return };
        let (p0, b0) = self.last.get(&r.handle).copied().unwrap_or_default();
        let (dp, db) =
            if r.packets >= p0 { (r.packets - p0, r.bytes.saturating_sub(b0)) } else { (r.packets, r.bytes) };
        if dp > 0 || db > 0 {
            crate::metrics::policy_counted(labels(a), dp, db);
        }
        self.next.insert(r.handle, (r.packets, r.bytes));
    }

    /// The values the next read counts from: this read's, when it read every rule; after a read cut short,
    /// the last ones with this read's over them (nothing added to the metrics is added twice).
    pub fn finish(mut self, whole: bool) -> HashMap<u64, (u64, u64)> {
        if whole {
            return self.next;
        }
        self.last.extend(self.next);
        self.last
    }
}

/// Reads the counters every `every` (one dump of the table's rules per period, whatever changed), off
/// the writer, so a pass never waits for it.
pub async fn run(attribution: Attribution, every: Duration) {
    let mut last = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let rendered = attribution.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let before = std::mem::take(&mut last);
        let read = tokio::task::spawn_blocking(move || {
            let mut tally = Tally::new(&rendered.attribution, before);
            let whole = nfnl::rule_counters(TABLE, |r| tally.rule(&r));
            if let Err(e) = &whole {
                tracing::debug!(error = %e, "reading the rules' counters");
            }
            tally.finish(whole.is_ok())
        });
        last = read.await.unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::nft::{rule_hash, rule_tag};
    use tabby_api::policy::model::Dir;

    #[test]
    fn counters_grow_by_their_deltas() {
        let text = "meta l4proto tcp counter drop".to_string();
        let tag = rule_tag(&text);
        let read = |packets: u64, handle: u64| RuleCounter {
            chain: "p-pi-1",
            handle,
            comment: Some(tag.as_str()),
            packets,
            bytes: packets * 60,
        };
        let a = Attr {
            dir: Dir::Ingress,
            tier: "default".into(),
            policy: "knp:x/deny".into(),
            rule: Some(2),
            action: "deny",
            staged: false,
        };
        let attribution: BTreeMap<(String, u64), Attr> = [(("p-pi-1".to_string(), rule_hash(&text)), a)].into();
        let series = r#"tabby_agent_policy_packets_total{direction="ingress",tier="default",policy="knp:x/deny",rule="2",action="deny",staged="false"}"#;
        let value = || {
            crate::metrics::encode()
                .lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let tally = |last, reads: &[RuleCounter], whole| {
            let mut t = Tally::new(&attribution, last);
            reads.iter().for_each(|r| t.rule(r));
            t.finish(whole)
        };
        let unrelated = RuleCounter { chain: "p-pi-1", handle: 1, comment: Some("other"), packets: 99, bytes: 1 };
        let last = tally(HashMap::new(), &[read(3, 7), unrelated], true);
        assert_eq!(value(), 3);
        assert_eq!(last.len(), 1, "only policy's rules are followed");
        let last = tally(last, &[read(5, 7)], true);
        assert_eq!(value(), 5);
        // Refilled: a new handle starts from zero.
        let last = tally(last, &[read(1, 9)], true);
        assert_eq!(value(), 6);
        // A read cut short keeps what it did not reach, and counts nothing twice.
        let last = tally(last.into_iter().chain([(7, (5, 300))]).collect(), &[read(2, 9)], false);
        assert_eq!((value(), last.get(&7), last.get(&9)), (7, Some(&(5, 300)), Some(&(2, 120))));
    }
}
