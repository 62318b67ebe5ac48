//! NAT outgoing with nftables: table `inet tabby` masquerades traffic from pools with natOutgoing to
//! destinations outside every pool (pod-to-pod keeps pod addresses).
//!
//! Through the `nft` CLI: the current state is read with `nft -j` (JSON) and every change is one
//! `nft -f -` batch, which the kernel applies as a single transaction (atomic). A batch carries only what
//! changed: added and deleted set elements, and the table, sets and chain only when missing. The CLI
//! was chosen over raw nftables netlink because its JSON and batch formats are stable, documented
//! interfaces, while the netlink encoding of expressions has no maintained Rust crate.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::Value;
use tabby_api::ipam::IPPool;

pub const TABLE: &str = "tabby";
const FAMILY: &str = "inet";

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("running nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
}

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
pub fn desired(pools: &[IPPool]) -> NatState {
    let mut s = NatState::default();
    for p in pools {
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

/// What `nft -j list table inet tabby` shows; `None` when the table is missing or incomplete.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Current {
    pub sets: NatState,
    pub rules: usize,
}

/// Parses `nft -j list table` output.
pub fn parse_current(json: &str) -> Option<Current> {
    let v: Value = serde_json::from_str(json).ok()?;
    let mut cur = Current::default();
    let mut sets_seen = 0;
    for o in v.get("nftables")?.as_array()? {
        if let Some(s) = o.get("set") {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            let target = match name {
                "pools4" => &mut cur.sets.pools4,
                "pools6" => &mut cur.sets.pools6,
                "masq4" => &mut cur.sets.masq4,
                "masq6" => &mut cur.sets.masq6,
                _ => continue,
            };
            sets_seen += 1;
            for e in s.get("elem").and_then(Value::as_array).into_iter().flatten() {
                if let Some(n) = elem(e) {
                    target.insert(n);
                }
            }
        }
        if o.get("rule").and_then(|r| r.get("chain")).and_then(Value::as_str) == Some("postrouting") {
            cur.rules += 1;
        }
    }
    (sets_seen == 4).then_some(cur)
}

fn elem(e: &Value) -> Option<IpNet> {
    if let Some(s) = e.as_str() {
        return s.parse::<std::net::IpAddr>().ok().map(IpNet::from);
    }
    if let Some(p) = e.get("prefix") {
        let addr: std::net::IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
        let len = p.get("len")?.as_u64()? as u8;
        return IpNet::new(addr, len).ok();
    }
    if let Some(e) = e.get("elem") {
        return elem(e.get("val").unwrap_or(e));
    }
    None
}

const RULES: usize = 2;

/// The batch that turns `cur` into `want`, or `None` when nothing changes.
pub fn batch(cur: Option<&Current>, want: &NatState) -> Option<String> {
    let mut b = String::new();
    let t = format!("{FAMILY} {TABLE}");
    let empty = Current::default();
    let fresh = cur.is_none();
    let cur = cur.unwrap_or(&empty);
    if fresh {
        b += &format!("add table {t}\n");
        for (name, ty) in
            [("pools4", "ipv4_addr"), ("pools6", "ipv6_addr"), ("masq4", "ipv4_addr"), ("masq6", "ipv6_addr")]
        {
            b += &format!("add set {t} {name} {{ type {ty}; flags interval; }}\n");
        }
        b += &format!("add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n");
    }
    if fresh || cur.rules != RULES {
        b += &format!("flush chain {t} postrouting\n");
        b += &format!("add rule {t} postrouting ip saddr @masq4 ip daddr != @pools4 masquerade\n");
        b += &format!("add rule {t} postrouting ip6 saddr @masq6 ip6 daddr != @pools6 masquerade\n");
    }
    for (name, have, need) in [
        ("pools4", &cur.sets.pools4, &want.pools4),
        ("pools6", &cur.sets.pools6, &want.pools6),
        ("masq4", &cur.sets.masq4, &want.masq4),
        ("masq6", &cur.sets.masq6, &want.masq6),
    ] {
        let del: Vec<String> = have.difference(need).map(ToString::to_string).collect();
        let add: Vec<String> = need.difference(have).map(ToString::to_string).collect();
        if !del.is_empty() {
            b += &format!("delete element {t} {name} {{ {} }}\n", del.join(", "));
        }
        if !add.is_empty() {
            b += &format!("add element {t} {name} {{ {} }}\n", add.join(", "));
        }
    }
    (!b.is_empty()).then_some(b)
}

fn nft(args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<String, NatError> {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(NatError::Spawn)?;
    if let (Some(s), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(s.as_bytes()).map_err(NatError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NatError::Spawn)?;
    if !out.status.success() {
        return Err(NatError::Failed { what, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads the table (`None` if missing).
pub fn read() -> Result<Option<Current>, NatError> {
    match nft(&["-j", "list", "table", FAMILY, TABLE], None, "list") {
        Ok(s) => Ok(parse_current(&s)),
        Err(NatError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Brings the table to `want`; returns whether a batch was applied. Reported as subsystem `nat`.
pub fn reconcile(want: &NatState) -> Result<bool, NatError> {
    let started = std::time::Instant::now();
    let r = apply(want);
    crate::metrics::reconcile_done("nat", started.elapsed(), r.is_ok());
    r
}

fn apply(want: &NatState) -> Result<bool, NatError> {
    let cur = read()?;
    let Some(b) = batch(cur.as_ref(), want) else { return Ok(false) };
    // A half-built table (a set or the chain deleted by hand) is rebuilt from scratch, in the same
    // transaction, so traffic never sees an empty table.
    let b = if cur.is_none() { format!("destroy table {FAMILY} {TABLE}\n{b}") } else { b };
    match nft(&["-f", "-"], Some(&b), "batch") {
        Ok(_) => Ok(true),
        // `destroy` needs nftables ≥ 1.0.8; older ones get the add-only batch.
        Err(NatError::Failed { .. }) if cur.is_none() => {
            let _ = nft(&["delete", "table", FAMILY, TABLE], None, "delete");
            nft(&["-f", "-"], batch(None, want).as_deref(), "batch").map(|_| true)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the table (cleanup). Returns whether it existed.
pub fn delete() -> Result<bool, NatError> {
    match nft(&["delete", "table", FAMILY, TABLE], None, "delete") {
        Ok(_) => Ok(true),
        Err(NatError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn fresh_table_is_built_in_one_batch() {
        let want = NatState { pools4: nets(&["10.0.0.0/16"]), masq4: nets(&["10.0.0.0/16"]), ..Default::default() };
        let b = batch(None, &want).unwrap();
        assert!(b.starts_with("add table inet tabby\n"));
        assert!(b.contains("ip saddr @masq4 ip daddr != @pools4 masquerade"));
        assert!(b.contains("add element inet tabby pools4 { 10.0.0.0/16 }"));
        assert!(b.contains("add element inet tabby masq4 { 10.0.0.0/16 }"));
        assert!(!b.contains("pools6 {  }"));
    }

    #[test]
    fn only_changes_are_sent() {
        let cur = Current {
            sets: NatState {
                pools4: nets(&["10.0.0.0/16", "10.1.0.0/16"]),
                masq4: nets(&["10.0.0.0/16"]),
                ..Default::default()
            },
            rules: 2,
        };
        assert_eq!(batch(Some(&cur), &cur.sets), None);
        let want = NatState {
            pools4: nets(&["10.0.0.0/16", "10.2.0.0/16"]),
            masq4: nets(&["10.0.0.0/16"]),
            ..Default::default()
        };
        assert_eq!(
            batch(Some(&cur), &want).unwrap(),
            "delete element inet tabby pools4 { 10.1.0.0/16 }\nadd element inet tabby pools4 { 10.2.0.0/16 }\n"
        );
        let broken = Current { rules: 0, ..cur.clone() };
        assert!(batch(Some(&broken), &cur.sets).unwrap().contains("flush chain inet tabby postrouting"));
    }

    #[test]
    fn parses_nft_json() {
        let j = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"tabby"}},
          {"set":{"family":"inet","name":"pools4","table":"tabby","type":"ipv4_addr","flags":["interval"],
            "elem":[{"prefix":{"addr":"10.0.0.0","len":16}},"10.9.9.9"]}},
          {"set":{"family":"inet","name":"pools6","table":"tabby","type":"ipv6_addr","flags":["interval"]}},
          {"set":{"family":"inet","name":"masq4","table":"tabby","type":"ipv4_addr","flags":["interval"],
            "elem":[{"prefix":{"addr":"10.0.0.0","len":16}}]}},
          {"set":{"family":"inet","name":"masq6","table":"tabby","type":"ipv6_addr","flags":["interval"]}},
          {"chain":{"family":"inet","table":"tabby","name":"postrouting"}},
          {"rule":{"family":"inet","table":"tabby","chain":"postrouting","handle":5,"expr":[]}},
          {"rule":{"family":"inet","table":"tabby","chain":"postrouting","handle":6,"expr":[]}}]}"#;
        let c = parse_current(j).unwrap();
        assert_eq!(c.rules, 2);
        assert_eq!(c.sets.pools4, nets(&["10.0.0.0/16", "10.9.9.9/32"]));
        assert_eq!(c.sets.masq4, nets(&["10.0.0.0/16"]));
        assert!(parse_current(r#"{"nftables":[]}"#).is_none());
    }
}
