//! Per-rule packet counters: every policy rule, tier end and unknown-interface drop carries a counter;
//! this reads them from the kernel (`nft -j -t list table`, every few seconds, never after a write) and
//! adds what they grew by to `tabby_agent_policy_packets_total` / `_bytes_total`, labelled with the
//! direction, tier, policy, rule and action the rule stands for ([`super::render::Attr`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::Attribution;
use super::render::Attr;
use crate::kernel::listing;
use crate::kernel::nft::{list_terse, rule_hash, tag_hash};

/// One counted rule as the kernel shows it (its chain's name borrowed from the listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count<'a> {
    pub chain: Cow<'a, str>,
    pub handle: u64,
    /// The hash in the rule's comment.
    pub tag: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The counters of `nft -j list table` output (pure): rules with a counter and a comment the writer put.
pub fn parse(json: &str) -> Vec<Count<'_>> {
    let Ok(l) = listing::parse(json) else { return vec![] };
    l.nftables
        .into_iter()
        .filter_map(|o| {
            let r = o.rule?;
            let (packets, bytes) = r.expr?;
            let tag = tag_hash(r.comment.as_deref()?)?;
            Some(Count { chain: r.chain, handle: r.handle, tag, packets, bytes })
        })
        .collect()
}

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

/// Adds what each counter grew by since `last` (by rule handle, unique in the table: a refilled chain's
/// rules are new handles, counted from zero) to the metrics; returns the new `last`.
pub fn feed(
    counts: &[Count],
    attribution: &BTreeMap<(String, String), Attr>,
    last: &HashMap<u64, (u64, u64)>,
) -> HashMap<u64, (u64, u64)> {
    let by_tag: HashMap<(&str, u64), &Attr> =
        attribution.iter().map(|((chain, text), a)| ((chain.as_str(), rule_hash(text)), a)).collect();
    let mut next = HashMap::with_capacity(counts.len());
    for c in counts {
        let Some(a) = by_tag.get(&(&*c.chain, c.tag)) else { continue };
        let (p0, b0) = last.get(&c.handle).copied().unwrap_or_default();
        let (dp, db) =
            if c.packets >= p0 { (c.packets - p0, c.bytes.saturating_sub(b0)) } else { (c.packets, c.bytes) };
        if dp > 0 || db > 0 {
            crate::metrics::policy_counted(labels(a), dp, db);
        }
        next.insert(c.handle, (c.packets, c.bytes));
    }
    next
}

/// Reads the counters every `every` (a table read per period, whatever changed), without the sets'
/// elements and without holding the writer, so a pass never waits for it.
pub async fn run(attribution: Attribution, every: Duration) {
    let mut last = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let Ok(Ok(Some(json))) = tokio::task::spawn_blocking(list_terse).await else { continue };
        let rendered = attribution.lock().unwrap_or_else(|p| p.into_inner()).clone();
        last = feed(&parse(&json), &rendered.attribution, &last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::nft::rule_tag;
    use tabby_api::policy::model::Dir;

    #[test]
    fn counters_grow_by_their_deltas() {
        let text = "meta l4proto tcp counter drop".to_string();
        let j = |p: u64, handle: u64| {
            format!(
                r#"{{"nftables":[{{"rule":{{"chain":"p-pi-1","handle":{handle},"comment":"{}","expr":[{{"counter":{{"packets":{p},"bytes":{}}}}},{{"drop":null}}]}}}}]}}"#,
                rule_tag(&text),
                p * 60
            )
        };
        let a = Attr {
            dir: Dir::Ingress,
            tier: "default".into(),
            policy: "knp:x/deny".into(),
            rule: Some(2),
            action: "deny",
            staged: false,
        };
        let attribution: BTreeMap<(String, String), Attr> = [(("p-pi-1".to_string(), text.clone()), a)].into();
        let series = r#"tabby_agent_policy_packets_total{direction="ingress",tier="default",policy="knp:x/deny",rule="2",action="deny",staged="false"}"#;
        let value = || {
            crate::metrics::encode()
                .lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let last = feed(&parse(&j(3, 7)), &attribution, &HashMap::new());
        assert_eq!(value(), 3);
        let last = feed(&parse(&j(5, 7)), &attribution, &last);
        assert_eq!(value(), 5);
        // Refilled: a new handle starts from zero.
        feed(&parse(&j(1, 9)), &attribution, &last);
        assert_eq!(value(), 6);
    }
}
