//! The compiled policy ([`Ruleset`]) as policy's section of table `inet tabby` (pure).
//!
//! | object | what |
//! |---|---|
//! | `p-forward` (filter forward, priority 0), `p-input` (filter input) | established/related accepted, invalid dropped, then traffic from a `tby*` interface to `p-from-wl` and to one to `p-to-wl` |
//! | `p-from-wl`, `p-to-wl` + maps `p-from-wl-map`, `p-to-wl-map` | `iifname`/`oifname` verdict maps: each local pod's veth → `goto` its endpoint chain; an interface the map lacks is dropped |
//! | `p-ee-<hash>`, `p-ei-<hash>` | endpoint chains (egress, ingress): the endpoint's tiers in order; named by content, so endpoints with the same policies share one |
//! | `p-te-<hash>`, `p-ti-<hash>` | tier chains: the tier's policies that apply, in order, then the tier's end (Deny: a counted drop) |
//! | `p-ce-<hash>`, `p-ci-<hash>` | chunks of a tier with more than 32 applying policies, cut where the policies' hashes say: a policy created or deleted rewrites its chunk (about 16 policies per level), not the whole tier |
//! | `p-pe-<id>`, `p-pi-<id>` | policy chains, one per policy and direction, shared by every endpoint: one rule per model rule and address family, each counted |
//! | `p-s<id>-4`, `p-s<id>-6` | the addresses a peer selector matches (pods, network sets, nodes): a hash set, an interval set when a network is among them |
//! | `p-n<id>-4`, `p-n<id>-6` | `addr . proto . port` sets: a named port on the pods that have it |
//!
//! Verdicts travel in three packet-mark bits: a policy's Allow sets [`ACCEPT`] and returns, Pass sets
//! [`PASS`] (either way the rest of the tier is skipped: each later call is conditional on neither bit), a
//! staged policy's match sets [`STAGED`]; Deny drops at once.
//! Chains return rather than accept, so a packet between two local pods meets the sender's egress and
//! then the receiver's ingress; the base chain's policy accepts what every check returned.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tabby_api::policy::Action;
use tabby_api::policy::model::{self, CMatch, CRule, Dir, Members, PolicyId, Program, Ruleset, SetDef, TierStep, fnv};

use crate::kernel::nft::{Chain, Element, Hook, Section, Set, rule_hash};

/// The owner of policy's objects in table `inet tabby`.
pub const OWNER: &str = "policy";
/// Allowed by a policy.
pub const ACCEPT: u32 = 0x1_0000;
/// Passed to the next tier.
pub const PASS: u32 = 0x2_0000;
/// A staged policy matched (its tier's end would not drop).
pub const STAGED: u32 = 0x4_0000;
/// The nflog group Log rules send to.
pub const LOG_GROUP: u16 = 3;
/// Prefix of every interface the agent wires.
const VETH_GLOB: &str = "tby*";

const CLEAR: &str = "meta mark set meta mark & 0xfff8ffff";

/// Whether a name in table `inet tabby` is policy's.
pub fn owns(name: &str) -> bool {
    name.starts_with("p-")
}

/// What a counted rule stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attr {
    pub dir: Dir,
    pub tier: String,
    /// The policy (`knp:ns/name`, `gnp:name`, …); empty for a tier's end or an unknown interface.
    pub policy: String,
    /// The user's rule index; `None` for a tier's end.
    pub rule: Option<usize>,
    /// `allow`, `deny`, `pass`, `log`; `tier-deny` (a tier's end); `unknown-interface`.
    pub action: &'static str,
    pub staged: bool,
}

/// Policy's section and what each counted rule means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub sets: Vec<Set>,
    /// Shared with the writer's copy of the section and with the renders [`patch`] makes from this one.
    pub chains: Vec<Arc<Chain>>,
    /// By chain and the hash of the rule's text ([`rule_hash`], what its comment carries); shared with the
    /// renders [`patch`] makes from this one.
    pub attribution: Arc<BTreeMap<(String, u64), Attr>>,
}

impl Rendered {
    pub fn section(&self) -> Section {
        Section { owner: OWNER, sets: self.sets.clone(), chains: self.chains.clone(), owns }
    }
}

fn short(s: &str) -> String {
    format!("{:012x}", fnv(s) >> 16)
}

/// The chain of policy `id` in direction `dir`.
pub fn policy_chain(id: &PolicyId, dir: Dir) -> String {
    format!("p-p{}-{}", if dir == Dir::Ingress { "i" } else { "e" }, short(&id.to_string()))
}

fn set_name(id: &str, named_port: bool, v6: bool) -> String {
    format!("p-{}{id}-{}", if named_port { "n" } else { "s" }, if v6 { 6 } else { 4 })
}

fn proto_name(p: u8) -> String {
    match p {
        model::TCP => "tcp".into(),
        model::UDP => "udp".into(),
        model::SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

fn ranges(r: &[(u16, u16)]) -> String {
    let items: Vec<String> = r.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    format!("{{ {} }}", items.join(", "))
}

fn nets(v: &[IpNet], v6: bool) -> Option<String> {
    let items: Vec<IpNet> = v.iter().filter(|n| n.addr().is_ipv6() == v6).copied().collect();
    if items.is_empty() {
        return None;
    }
    let items: Vec<String> = model::disjoint(items).into_iter().map(|n| Element::net(n).as_str().to_string()).collect();
    Some(format!("{{ {} }}", items.join(", ")))
}

/// The match of one side for one family; `None`: this side cannot match that family.
fn side(m: &CMatch, src: bool, v6: bool, out: &mut Vec<String>) -> Option<()> {
    if m.never {
        return None;
    }
    let ip = if v6 { "ip6" } else { "ip" };
    let addr = if src { "saddr" } else { "daddr" };
    if !m.nets.is_empty() {
        out.push(format!("{ip} {addr} {}", nets(&m.nets, v6)?));
    }
    if let Some(n) = nets(&m.not_nets, v6) {
        out.push(format!("{ip} {addr} != {n}"));
    }
    if let Some(s) = &m.set {
        out.push(format!("{ip} {addr} @{}", set_name(s, false, v6)));
    }
    if let Some(s) = &m.not_set {
        out.push(format!("{ip} {addr} != @{}", set_name(s, false, v6)));
    }
    let port = if src { "sport" } else { "dport" };
    if !m.ports.is_empty() {
        out.push(format!("th {port} {}", ranges(&m.ports)));
    }
    if !m.not_ports.is_empty() {
        out.push(format!("th {port} != {}", ranges(&m.not_ports)));
    }
    if let Some(s) = &m.named {
        out.push(format!("{ip} {addr} . meta l4proto . th {port} @{}", set_name(s, true, v6)));
    }
    for s in &m.not_named {
        out.push(format!("{ip} {addr} . meta l4proto . th {port} != @{}", set_name(s, true, v6)));
    }
    Some(())
}

/// The match part of a rule for one family; `None` when the rule cannot match that family.
pub fn rule_match(r: &CRule, v6: bool) -> Option<String> {
    if r.ip_version.is_some_and(|v| v != if v6 { 6 } else { 4 }) {
        return None;
    }
    let mut parts = Vec::new();
    match r.protocol {
        Some(model::ICMP) if v6 => return None,
        Some(model::ICMPV6) if !v6 => return None,
        Some(p) => parts.push(format!("meta l4proto {}", proto_name(p))),
        None => {
            // A port needs a transport header: named ports without a protocol are TCP, UDP or SCTP.
            let ports = |m: &CMatch| {
                !m.ports.is_empty() || !m.not_ports.is_empty() || m.named.is_some() || !m.not_named.is_empty()
            };
            if ports(&r.src) || ports(&r.dst) {
                parts.push("meta l4proto { tcp, udp, sctp }".into());
            }
        }
    }
    if let Some(p) = r.not_protocol {
        parts.push(format!("meta l4proto != {}", proto_name(p)));
    }
    let icmp = if v6 { "icmpv6" } else { "icmp" };
    if let Some((t, c)) = r.icmp {
        parts.push(format!("{icmp} type {t}"));
        if let Some(c) = c {
            parts.push(format!("{icmp} code {c}"));
        }
    }
    if let Some((t, c)) = r.not_icmp {
        match c {
            Some(c) => parts.push(format!("{icmp} type . {icmp} code != {{ {t} . {c} }}")),
            None => parts.push(format!("{icmp} type != {t}")),
        }
    }
    side(&r.src, true, v6, &mut parts)?;
    side(&r.dst, false, v6, &mut parts)?;
    Some(parts.join(" "))
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Pass => "pass",
        Action::Log => "log",
    }
}

struct Out {
    r: Rendered,
    /// Chains already rendered (shared ones come once).
    have: BTreeMap<String, ()>,
}

impl Out {
    fn chain(&mut self, name: String, rules: Vec<(String, Option<Attr>)>) -> String {
        if self.have.insert(name.clone(), ()).is_none() {
            for (text, attr) in &rules {
                if let Some(a) = attr {
                    Arc::make_mut(&mut self.r.attribution).insert((name.clone(), rule_hash(text)), a.clone());
                }
            }
            self.r.chains.push(Arc::new(Chain {
                name: name.clone(),
                hook: None,
                rules: rules.into_iter().map(|(t, _)| t).collect(),
            }));
        }
        name
    }
}

fn policy_rules(rs: &Ruleset, id: &PolicyId, dir: Dir) -> Vec<(String, Option<Attr>)> {
    let Some(p) = rs.policies.get(&(id.clone(), dir)) else { return vec![] };
    let chain = policy_chain(id, dir);
    let mut out = Vec::new();
    for r in &p.rules {
        let v4 = rule_match(r, false);
        for v6 in [false, true] {
            let Some(m) = (if v6 { rule_match(r, true).filter(|m| Some(m) != v4.as_ref()) } else { v4.clone() }) else {
                continue;
            };
            let m = if m.is_empty() { m } else { format!("{m} ") };
            let verdict = if p.staged {
                match r.action {
                    // A staged Log is counted only; any other match decides the staged policy.
                    Action::Log => "counter".to_string(),
                    _ => format!("counter meta mark set meta mark | {STAGED:#x} return"),
                }
            } else {
                match r.action {
                    Action::Allow => format!("counter meta mark set meta mark | {ACCEPT:#x} return"),
                    Action::Pass => format!("counter meta mark set meta mark | {PASS:#x} return"),
                    Action::Deny => "counter drop".into(),
                    Action::Log => format!("counter log prefix \"T|{chain}|{}\" group {LOG_GROUP}", r.origin),
                }
            };
            let attr = Attr {
                dir,
                tier: p.tier.clone(),
                policy: id.to_string(),
                rule: Some(r.origin),
                action: action_name(r.action),
                staged: p.staged,
            };
            out.push((format!("{m}{verdict}"), Some(attr)));
        }
    }
    out
}

/// Average number of calls in a chunk of a long tier chain.
const CHUNK: u64 = 16;
/// A tier chain calls at most this many chains directly; a longer list is split into chunks.
const FLAT: usize = 32;

/// The rules that call `items` (chain, only staged policies under it) in order: after the first, each
/// call is skipped once Allow or Pass is set. With `returns`, an Allow also returns at once (a staged
/// policy never sets it). A list of policies goes without those returns: a connection no policy decides
/// (or that a late one does) meets one rule per policy instead of two, and one that an early policy allows
/// meets at most the rest of its list (64 in a chunk, 32 in a tier) as skipped calls. A list of chunks
/// keeps them, so that an Allow leaves as soon as its chunk returns.
fn calls(items: &[(String, bool)], returns: bool) -> Vec<(String, Option<Attr>)> {
    let mut rules = Vec::new();
    for (i, (chain, staged)) in items.iter().enumerate() {
        rules.push((
            if i == 0 { format!("jump {chain}") } else { format!("meta mark & {DECIDED:#x} == 0 jump {chain}") },
            None,
        ));
        if returns && !staged {
            rules.push((format!("meta mark & {ACCEPT:#x} != 0 return"), None));
        }
    }
    rules
}

/// Allowed or passed: the rest of the tier is skipped.
const DECIDED: u32 = ACCEPT | PASS;

/// `items` cut into chunk chains (`p-ci-<hash>`, `p-ce-<hash>`, named by content) where the items' own
/// hashes say (content-defined, as rsync cuts files): an item created or deleted changes its own chunk
/// only, so a long tier is rewritten in O(chunk) rules per level, never in full. A chunk holds at least
/// two items (each level at least halves) and at most four times the average.
fn chunks(o: &mut Out, items: Vec<(String, bool)>, dir: Dir, of_policies: bool) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, bool)> = Vec::new();
    let last = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let cut = fnv(&item.0).is_multiple_of(CHUNK);
        cur.push(item);
        if (cut && cur.len() >= 2) || cur.len() as u64 >= 4 * CHUNK || i + 1 == last {
            let rules = calls(&cur, !of_policies);
            let content: Vec<&str> = rules.iter().map(|(t, _)| t.as_str()).collect();
            let name = format!("p-c{}-{}", if dir == Dir::Ingress { "i" } else { "e" }, short(&content.join("\n")));
            let staged = cur.iter().all(|(_, s)| *s);
            out.push((o.chain(name, rules), staged));
            cur.clear();
        }
    }
    out
}

fn tier_chain(o: &mut Out, rs: &Ruleset, step: &TierStep, dir: Dir) -> String {
    let mut items = Vec::with_capacity(step.policies.len());
    for id in &step.policies {
        let chain = policy_chain(id, dir);
        let rules_of = policy_rules(rs, id, dir);
        o.chain(chain.clone(), rules_of);
        let staged = rs.policies.get(&(id.clone(), dir)).is_some_and(|p| p.staged);
        items.push((chain, staged));
    }
    let mut of_policies = true;
    while items.len() > FLAT {
        items = chunks(o, items, dir, of_policies);
        of_policies = false;
    }
    let mut rules = calls(&items, !of_policies);
    let end = Attr {
        dir,
        tier: step.tier.clone(),
        policy: String::new(),
        rule: None,
        action: "tier-deny",
        staged: step.only_staged,
    };
    if step.only_staged {
        rules.push((format!("meta mark & {:#x} == 0 counter", PASS | STAGED), Some(end)));
    } else if step.end == Action::Deny {
        rules.push((format!("meta mark & {DECIDED:#x} == 0 counter drop"), Some(end)));
    }
    let content: Vec<&str> = rules.iter().map(|(t, _)| t.as_str()).collect();
    let name = format!(
        "p-t{}-{}",
        if dir == Dir::Ingress { "i" } else { "e" },
        short(&format!("{}|{}", step.tier, content.join("\n")))
    );
    o.chain(name, rules)
}

fn endpoint_chain(o: &mut Out, rs: &Ruleset, prog: &Program, dir: Dir) -> String {
    let mut rules = vec![(CLEAR.to_string(), None)];
    for step in prog {
        let t = tier_chain(o, rs, step, dir);
        rules.push((format!("jump {t}"), None));
        rules.push((format!("meta mark & {ACCEPT:#x} != 0 {CLEAR} return"), None));
        rules.push((CLEAR.to_string(), None));
    }
    let content: Vec<&str> = rules.iter().map(|(t, _)| t.as_str()).collect();
    let name = format!("p-e{}-{}", if dir == Dir::Ingress { "i" } else { "e" }, short(&content.join("\n")));
    o.chain(name, rules)
}

fn base(name: &str, hook: &str, rules: Vec<String>) -> Arc<Chain> {
    Arc::new(Chain {
        name: name.into(),
        hook: Some(Hook { ty: "filter".into(), hook: hook.into(), priority: 0, policy: "accept".into() }),
        rules,
    })
}

/// The two sets (IPv4, IPv6) of set `id`.
fn sets(id: &str, def: &SetDef, members: &Members) -> [Set; 2] {
    let named = def.is_named_port();
    [false, true].map(|v6| {
        let family = |ip: &IpAddr| ip.is_ipv6() == v6;
        let (ty, interval, elements) = if named {
            let a = if v6 { "ipv6_addr" } else { "ipv4_addr" };
            let e = members
                .ports
                .iter()
                .filter(|(ip, _, _)| family(ip))
                .map(|(ip, p, port)| Element::raw(format!("{ip} . {} . {port}", proto_name(*p))))
                .collect();
            (format!("{a} . inet_proto . inet_service"), false, e)
        } else {
            let nets = members.nets.iter().filter(|n| family(&n.addr()));
            // An interval set only when a network is in it: nft (1.0) reads back the elements of every
            // interval set of the table before it changes any of them (80 ms per change at 2,000 sets);
            // a set of pod addresses is a plain hash set, and a set that gains a network is made again.
            let interval = nets.clone().any(|n| n.prefix_len() < n.max_prefix_len());
            let e = nets.map(|n| Element::net(*n)).collect();
            ((if v6 { "ipv6_addr" } else { "ipv4_addr" }).to_string(), interval, e)
        };
        Set { name: set_name(id, named, v6), ty, interval, map: None, elements: Arc::new(elements) }
    })
}

/// `r` (rendered from an earlier `rs`) with the sets `ids` of `rs` rendered again: what [`render`] gives
/// when only those sets' members changed (another node's pods), at the cost of those sets.
pub fn patch(r: &Rendered, rs: &Ruleset, ids: &[String]) -> Rendered {
    let mut out = r.clone();
    for id in ids {
        let Some((def, members)) = rs.sets.get(id) else { continue };
        for set in sets(id, def, members) {
            match out.sets.binary_search_by(|s| s.name.as_str().cmp(&set.name)) {
                Ok(i) => out.sets[i] = set,
                Err(i) => out.sets.insert(i, set),
            }
        }
    }
    out
}

/// Policy's section for the local endpoints: `ifaces` maps an endpoint key (`namespace/name`) of
/// `rs.endpoints` to its host-side interface.
pub fn render(rs: &Ruleset, ifaces: &BTreeMap<String, String>) -> Rendered {
    let mut o = Out { r: Rendered::default(), have: BTreeMap::new() };
    let (mut from, mut to) = (Vec::new(), Vec::new());
    for (key, (ingress, egress)) in &rs.endpoints {
        let Some(iface) = ifaces.get(key) else { continue };
        let e = endpoint_chain(&mut o, rs, egress, Dir::Egress);
        let i = endpoint_chain(&mut o, rs, ingress, Dir::Ingress);
        from.push(Element::map_entry(iface, &format!("goto {e}")));
        to.push(Element::map_entry(iface, &format!("goto {i}")));
    }
    for (id, (def, members)) in &rs.sets {
        o.r.sets.extend(sets(id, def, members));
    }
    let unknown = |dir| Attr {
        dir,
        tier: String::new(),
        policy: String::new(),
        rule: None,
        action: "unknown-interface",
        staged: false,
    };
    for (name, elems, key) in [("p-from-wl-map", from, "iifname"), ("p-to-wl-map", to, "oifname")] {
        o.r.sets.push(Set {
            name: name.into(),
            ty: "ifname".into(),
            interval: false,
            map: Some("verdict".into()),
            elements: Arc::new(elems.into_iter().collect()),
        });
        let chain = name.trim_end_matches("-map").to_string();
        let dir = if key == "iifname" { Dir::Egress } else { Dir::Ingress };
        Arc::make_mut(&mut o.r.attribution).insert((chain.clone(), rule_hash("counter drop")), unknown(dir));
        o.r.chains.push(Arc::new(Chain {
            name: chain,
            hook: None,
            rules: vec![format!("{key} vmap @{name}"), "counter drop".into()],
        }));
    }
    let g = VETH_GLOB;
    o.r.chains.push(base(
        "p-forward",
        "forward",
        vec![
            "ct state established,related accept".into(),
            format!("iifname \"{g}\" ct state invalid counter drop"),
            format!("oifname \"{g}\" ct state invalid counter drop"),
            format!("iifname \"{g}\" jump p-from-wl"),
            format!("oifname \"{g}\" jump p-to-wl"),
        ],
    ));
    o.r.chains.push(base(
        "p-input",
        "input",
        vec![
            format!("iifname \"{g}\" ct state established,related accept"),
            format!("iifname \"{g}\" ct state invalid counter drop"),
            // Neighbour discovery with the host is not policy's business.
            format!(
                "iifname \"{g}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept"
            ),
            format!("iifname \"{g}\" jump p-from-wl"),
        ],
    ));
    o.r.sets.sort_by(|a, b| a.name.cmp(&b.name));
    o.r
}

#[cfg(test)]
mod tests;
