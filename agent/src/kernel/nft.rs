//! The one writer of nftables table `inet tabby`, shared by every owner of objects in it (NAT outgoing
//! and network policy).
//!
//! Each owner describes what it wants as a [`Section`] of typed objects: sets (with their elements) and
//! chains (base or regular, with their rules). [`plan`] compares the sections with what the kernel holds
//! and returns the [`Batch`] of changes, applied as one `nft -f -` transaction (nftables applies a batch
//! atomically): a missing table, set or chain is added; set elements are added and deleted one by one; a
//! chain whose rules differ is flushed and refilled; objects an owner claims but no longer wants are
//! deleted. Nothing else is touched: objects no section claims (another owner's, or someone else's) stay,
//! and the table itself is never rebuilt.
//!
//! Rules are compared by a hash of their text carried in the rule's comment (`tabby:<16 hex>`), so a
//! chain is rewritten only when its rule list changed, and a rule someone edited or deleted by hand is
//! noticed.
//!
//! After a successful commit the writer keeps what the table now holds (what it had read, with the batch
//! applied), so the next commit plans against that without reading the table back: a change costs the
//! changed objects, not the table. [`Nft::refresh`] forgets it, so the next commit reads the kernel again
//! (each owner's resync, and after any failure).
//!
//! Through the `nft` CLI, in its text syntax: the state is read with `nft -j list table` (JSON), and
//! batches are written as text. Measured against the JSON input syntax and against the library the CLI
//! uses (libnftables, in process, so no fork and exec; it sends the same netlink messages a hand-written
//! encoder would) in docs/agent.md ("NAT outgoing"): the CLI costs 2–3.5 ms more per transaction, paid
//! only when something changed or a resync is due, and there is no maintained Rust crate for the netlink
//! encoding of nftables expressions; so the CLI stays.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ipnet::IpNet;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "tabby";

#[derive(Debug, Clone, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(String),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
    #[error("nft printed a table it cannot read: {0}")]
    Parse(String),
}

/// A set or map element in nft syntax. Addresses are kept canonical (a host prefix is written as the bare
/// address, as the kernel reports it), so desired and current elements compare equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element(String);

impl Element {
    /// A network: `10.0.0.0/16`; a host prefix (`/32`, `/128`) as the bare address.
    pub fn net(n: IpNet) -> Element {
        let n = n.trunc();
        if n.prefix_len() == n.max_prefix_len() { Element(n.addr().to_string()) } else { Element(n.to_string()) }
    }

    /// A map element: `"key" : verdict` (the verdict `goto chain` or `jump chain`).
    pub fn map_entry(key: &str, verdict: &str) -> Element {
        Element(format!("\"{key}\" : {verdict}"))
    }

    /// Any element in the form the kernel reports it (`10.0.0.1 . tcp . 80` for a concatenation).
    pub fn raw(text: impl Into<String>) -> Element {
        Element(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What `delete element` takes: a map element's key alone.
    fn key(&self) -> &str {
        self.0.split_once(" : ").map_or(self.0.as_str(), |(k, _)| k)
    }
}

/// A set's elements, shared: what an owner rendered, what the writer has staged and what it knows the
/// kernel holds after a commit are one copy, and a set nobody changed compares by pointer.
pub type Elements = Arc<BTreeSet<Element>>;

/// A named set, or a map when `map` names the type of its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// `ipv4_addr`, `ipv6_addr`, `ipv4_addr . inet_proto . inet_service`, `ifname`, …
    pub ty: String,
    pub interval: bool,
    /// A map's value type (`verdict`); `None` for a set.
    pub map: Option<String>,
    pub elements: Elements,
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter`, `nat`, `route`.
    pub ty: String,
    pub hook: String,
    pub priority: i32,
    pub policy: String,
}

/// A chain and its rules (nft rule syntax, without the comment: the writer adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<String>,
}

/// What one owner wants in the table, and which names it owns (to delete what it no longer wants). Its
/// chains are shared with whoever rendered them (the writer keeps the section it last committed: a copy
/// of every rule there would double the largest part of policy's memory).
#[derive(Debug, Clone)]
pub struct Section {
    pub owner: &'static str,
    pub sets: Vec<Set>,
    pub chains: Vec<Arc<Chain>>,
    /// Whether an object of the table with this name is this owner's.
    pub owns: fn(&str) -> bool,
}

impl Section {
    /// The names of its chains and of its sets (what it wants to keep: linear, not a scan per name).
    fn names(&self) -> (HashSet<&str>, HashSet<&str>) {
        (self.chains.iter().map(|c| c.name.as_str()).collect(), self.sets.iter().map(|x| x.name.as_str()).collect())
    }
}

/// A set (or map) as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentSet {
    pub ty: String,
    pub interval: bool,
    pub map: Option<String>,
    pub elements: Elements,
}

impl CurrentSet {
    fn same_kind(&self, s: &Set) -> bool {
        self.ty == s.ty && self.interval == s.interval && self.map == s.map
    }
}

/// A chain as the kernel holds it: its hook and, in order, the hash each rule's comment carries ([`rule_tag`];
/// `None` for a rule without one): what tells a rule the writer wrote from any other, at 8 bytes a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentChain {
    pub hook: Option<Hook>,
    pub rules: Vec<Option<u64>>,
}

/// What `nft -j list table inet tabby` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    pub sets: BTreeMap<String, CurrentSet>,
    pub chains: BTreeMap<String, CurrentChain>,
}

/// The comment that identifies a rule: a stable hash of its text (FNV-1a, 64 bits).
pub fn rule_tag(rule: &str) -> String {
    Tag(rule_hash(rule)).to_string()
}

/// A rule's comment as written: `tabby:<16 hex>`.
struct Tag(u64);

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TAG_PREFIX}{:016x}", self.0)
    }
}

/// What a rule's comment starts with; the hash follows in hex.
const TAG_PREFIX: &str = "tabby:";

/// The hash [`rule_tag`] writes.
pub fn rule_hash(rule: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The hash in a comment [`rule_tag`] wrote (`None` for any other comment).
pub fn tag_hash(comment: &str) -> Option<u64> {
    u64::from_str_radix(comment.strip_prefix(TAG_PREFIX)?, 16).ok()
}

/// Parses `nft -j list table` output ([`super::listing`]: nothing but what the writer reads is built).
pub fn parse(json: &str) -> Result<Current, NftError> {
    let listing = super::listing::parse(json).map_err(|e| NftError::Parse(e.to_string()))?;
    let mut cur = Current::default();
    for o in listing.nftables {
        if let Some(s) = o.set.or(o.map) {
            let set = CurrentSet { ty: s.ty, interval: s.interval, map: s.map, elements: Arc::new(s.elem) };
            cur.sets.insert(s.name.into_owned(), set);
        } else if let Some(c) = o.chain {
            let hook = c.hook.map(|hook| Hook {
                ty: c.ty.unwrap_or_default(),
                hook,
                priority: c.prio.unwrap_or_default() as i32,
                policy: c.policy.unwrap_or_default(),
            });
            cur.chains.entry(c.name.into_owned()).or_default().hook = hook;
        } else if let Some(r) = o.rule {
            let tag = r.comment.as_deref().and_then(tag_hash);
            match cur.chains.get_mut(&*r.chain) {
                Some(chain) => chain.rules.push(tag),
                None => {
                    cur.chains.insert(r.chain.into_owned(), CurrentChain { hook: None, rules: vec![tag] });
                }
            }
        }
    }
    Ok(cur)
}

/// One change of a batch, borrowing what it names from the sections and the table it was planned
/// from: a batch that builds a large table holds no second copy of its rules or elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'s> {
    AddTable,
    /// The set (or map), without its elements (they follow as [`Change::AddElements`]).
    AddSet(&'s Set),
    /// The chain, without its rules (they follow as [`Change::AddRule`]).
    AddChain(&'s Chain),
    FlushChain(&'s str),
    DeleteChain(&'s str),
    DeleteSet(&'s str),
    DeleteMap(&'s str),
    DeleteElements(&'s str, Vec<&'s Element>),
    AddElements(&'s str, Vec<&'s Element>),
    AddRule(&'s str, &'s str),
}

/// The changes of one transaction, in an order nftables accepts: containers before their contents,
/// rules removed before what they refer to, and added after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch<'s>(pub Vec<Change<'s>>);

impl Batch<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes the batch in `nft -f` syntax, a line per change (streamed to `nft`: the text of a batch
    /// that builds a large table is never held whole).
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let t = format_args!("{FAMILY} {TABLE}");
        let list = |out: &mut dyn Write, v: &[&Element], key: bool| -> std::io::Result<()> {
            for (i, e) in v.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                write!(out, "{sep}{}", if key { e.key() } else { e.as_str() })?;
            }
            Ok(())
        };
        for c in &self.0 {
            match c {
                Change::AddTable => write!(out, "add table {t}")?,
                Change::AddSet(s) => {
                    let flags = if s.interval { " flags interval;" } else { "" };
                    match &s.map {
                        Some(v) => write!(out, "add map {t} {} {{ type {} : {v};{flags} }}", s.name, s.ty)?,
                        None => write!(out, "add set {t} {} {{ type {};{flags} }}", s.name, s.ty)?,
                    }
                }
                Change::AddChain(c) => match &c.hook {
                    Some(h) => write!(
                        out,
                        "add chain {t} {} {{ type {} hook {} priority {}; policy {}; }}",
                        c.name, h.ty, h.hook, h.priority, h.policy
                    )?,
                    None => write!(out, "add chain {t} {}", c.name)?,
                },
                Change::FlushChain(n) => write!(out, "flush chain {t} {n}")?,
                Change::DeleteChain(n) => write!(out, "delete chain {t} {n}")?,
                Change::DeleteSet(n) => write!(out, "delete set {t} {n}")?,
                Change::DeleteMap(n) => write!(out, "delete map {t} {n}")?,
                Change::DeleteElements(n, e) => {
                    write!(out, "delete element {t} {n} {{ ")?;
                    list(out, e, true)?;
                    write!(out, " }}")?;
                }
                Change::AddElements(n, e) => {
                    write!(out, "add element {t} {n} {{ ")?;
                    list(out, e, false)?;
                    write!(out, " }}")?;
                }
                Change::AddRule(chain, rule) => {
                    write!(out, "add rule {t} {chain} {rule} comment \"{}\"", Tag(rule_hash(rule)))?
                }
            }
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// The batch in `nft -f` syntax, whole (tests and logs).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// What an absent table holds.
static EMPTY: Current = Current { sets: BTreeMap::new(), chains: BTreeMap::new() };

/// The batch that brings the table (`cur`, `None` when it does not exist) to what `sections` want.
pub fn plan<'s>(cur: Option<&'s Current>, sections: impl IntoIterator<Item = &'s Section>) -> Batch<'s> {
    let have = cur.unwrap_or(&EMPTY);
    let mut b = Batch::default();
    if cur.is_none() {
        b.0.push(Change::AddTable);
    }
    let (mut add_sets, mut add_chains, mut flush, mut drop_chains, mut drop_sets) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut del_elems, mut add_elems, mut add_rules) = (vec![], vec![], vec![]);
    for s in sections {
        for set in &s.sets {
            let known = have.sets.get(&set.name).filter(|h| h.same_kind(set));
            if let Some(h) = have.sets.get(&set.name).filter(|_| known.is_none()) {
                // Another type or flags: only a new set will do (its chains are refilled below).
                drop_sets.push(delete_set(&set.name, h));
            }
            let had = known.map(|h| &h.elements);
            if had.is_none() {
                add_sets.push(Change::AddSet(set));
            }
            // What the last commit wrote from this very set (or an equal one): nothing to compare.
            if had.is_some_and(|h| Arc::ptr_eq(h, &set.elements) || h == &set.elements) {
                continue;
            }
            let (gone, new): (Vec<&Element>, Vec<&Element>) = match had {
                Some(h) => (h.difference(&set.elements).collect(), set.elements.difference(h).collect()),
                None => (vec![], set.elements.iter().collect()),
            };
            if !gone.is_empty() {
                del_elems.push(Change::DeleteElements(&set.name, gone));
            }
            if !new.is_empty() {
                add_elems.push(Change::AddElements(&set.name, new));
            }
        }
        let recreated: BTreeSet<&str> = s
            .sets
            .iter()
            .filter(|set| have.sets.get(&set.name).is_some_and(|h| !h.same_kind(set)))
            .map(|set| set.name.as_str())
            .collect();
        for c in &s.chains {
            let same = |h: &CurrentChain| {
                h.rules.len() == c.rules.len() && h.rules.iter().zip(&c.rules).all(|(t, r)| *t == Some(rule_hash(r)))
            };
            let refill = match have.chains.get(&c.name) {
                Some(h) if h.hook != c.hook => {
                    flush.push(Change::FlushChain(&c.name));
                    drop_chains.push(Change::DeleteChain(&c.name));
                    add_chains.push(Change::AddChain(c));
                    true
                }
                Some(h)
                    if !same(h) || c.rules.iter().any(|r| recreated.iter().any(|n| r.contains(&format!("@{n}")))) =>
                {
                    flush.push(Change::FlushChain(&c.name));
                    true
                }
                Some(_) => false,
                None => {
                    add_chains.push(Change::AddChain(c));
                    true
                }
            };
            if refill {
                add_rules.extend(c.rules.iter().map(|r| Change::AddRule(&c.name, r)));
            }
        }
        // What this owner has in the table and no longer wants.
        let (chains, sets) = s.names();
        for name in have.chains.keys().filter(|n| (s.owns)(n) && !chains.contains(n.as_str())) {
            flush.push(Change::FlushChain(name));
            drop_chains.push(Change::DeleteChain(name));
        }
        for (name, h) in have.sets.iter().filter(|(n, _)| (s.owns)(n) && !sets.contains(n.as_str())) {
            drop_sets.push(delete_set(name, h));
        }
    }
    // Elements first (a map's goto elements hold their chains), then rules (which hold sets and chains),
    // sets and maps, chains; additions in the reverse order, rules last.
    for group in [del_elems, flush, drop_sets, drop_chains, add_sets, add_chains, add_elems, add_rules] {
        b.0.extend(group);
    }
    b
}

fn delete_set<'s>(name: &'s str, h: &CurrentSet) -> Change<'s> {
    if h.map.is_some() { Change::DeleteMap(name) } else { Change::DeleteSet(name) }
}

/// What the table holds after `batch` (planned by [`plan`] from `cur` for `sections`) was applied.
pub fn after<'s>(cur: Option<&Current>, sections: impl IntoIterator<Item = &'s Section>) -> Current {
    applied(cur.cloned().unwrap_or_default(), sections)
}

/// [`after`], taking what the table held: the writer's own state moves instead of being copied, and set
/// elements are shared with the sections.
fn applied<'s>(mut out: Current, sections: impl IntoIterator<Item = &'s Section>) -> Current {
    for s in sections {
        let (chains, sets) = s.names();
        out.chains.retain(|n, _| !(s.owns)(n) || chains.contains(n.as_str()));
        out.sets.retain(|n, _| !(s.owns)(n) || sets.contains(n.as_str()));
        for set in &s.sets {
            out.sets.insert(
                set.name.clone(),
                CurrentSet {
                    ty: set.ty.clone(),
                    interval: set.interval,
                    map: set.map.clone(),
                    elements: set.elements.clone(),
                },
            );
        }
        for c in &s.chains {
            let rules = c.rules.iter().map(|r| Some(rule_hash(r))).collect();
            out.chains.insert(c.name.clone(), CurrentChain { hook: c.hook.clone(), rules });
        }
    }
    out
}

/// How the writer reaches the kernel: the `nft` CLI, or a fake in tests.
pub trait Exec: Send {
    /// `nft -j list table inet tabby`; `None` when the table does not exist.
    fn list(&mut self) -> Result<Option<String>, NftError>;
    /// `nft -f -` with `batch`.
    fn run(&mut self, batch: &Batch<'_>) -> Result<(), NftError>;
    /// `nft delete table inet tabby`; whether it existed.
    fn delete_table(&mut self) -> Result<bool, NftError>;
}

/// The `nft` command.
#[derive(Debug, Default)]
pub struct Cli;

/// Runs `nft args`, streaming `stdin` to it (nft reads its whole input before it reports anything).
fn nft(args: &[&str], stdin: Option<&Batch<'_>>, what: &'static str) -> Result<String, NftError> {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| NftError::Spawn(e.to_string()))?;
    let wrote = match (stdin, child.stdin.take()) {
        (Some(b), Some(i)) => {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, i);
            b.write_to(&mut w).and_then(|()| w.flush())
        }
        _ => Ok(()),
    };
    let out = child.wait_with_output().map_err(|e| NftError::Spawn(e.to_string()))?;
    if !out.status.success() {
        // What nft says matters more than the broken pipe its early exit left.
        return Err(NftError::Failed { what, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    wrote.map_err(|e| NftError::Spawn(format!("writing the batch: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing(e: &NftError) -> bool {
    matches!(e, NftError::Failed { stderr, .. } if stderr.contains("No such file"))
}

/// The table from the kernel, parsed (`None`: it does not exist); what [`verify`] reads.
pub fn read_kernel() -> Result<Option<Current>, NftError> {
    Cli.list()?.map(|j| parse(&j)).transpose()
}

/// `nft <flags> list table inet tabby`; `None` when the table does not exist.
fn list_table(flags: &[&str]) -> Result<Option<String>, NftError> {
    let args: Vec<&str> = flags.iter().copied().chain(["list", "table", FAMILY, TABLE]).collect();
    match nft(&args, None, "list") {
        Ok(s) => Ok(Some(s)),
        Err(e) if missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every `every`, reads the table from the kernel without holding the writer (a large table takes
/// hundreds of milliseconds to list and parse, and a pass must not wait for that) and hands it to the
/// writer ([`Nft::adopt`]): the next commit then repairs anything changed by hand.
pub async fn verify(writer: std::sync::Arc<std::sync::Mutex<Nft>>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let at = writer.lock().unwrap_or_else(|p| p.into_inner()).generation();
        match tokio::task::spawn_blocking(read_kernel).await {
            Ok(Ok(read)) => {
                let adopted = writer.lock().unwrap_or_else(|p| p.into_inner()).adopt(read, at);
                tracing::debug!(adopted, "nftables table read back");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the nftables table back"),
            Err(e) => tracing::debug!(error = %e, "reading the nftables table back"),
        }
    }
}

impl Exec for Cli {
    fn list(&mut self) -> Result<Option<String>, NftError> {
        list_table(&["-j"])
    }

    fn run(&mut self, batch: &Batch<'_>) -> Result<(), NftError> {
        nft(&["-f", "-"], Some(batch), "batch").map(|_| ())
    }

    fn delete_table(&mut self) -> Result<bool, NftError> {
        match nft(&["delete", "table", FAMILY, TABLE], None, "delete") {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The writer: every owner's section, and one transaction per [`Nft::commit`].
pub struct Nft {
    exec: Box<dyn Exec>,
    sections: BTreeMap<&'static str, Section>,
    /// What the table holds, as of the last successful commit (`None`: read it).
    known: Option<Current>,
    /// Counts commits (and anything else that changes what the writer knows): a read of the kernel taken
    /// at one generation is adopted only if the writer is still at it ([`Nft::adopt`]).
    generation: u64,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new(Box::new(Cli))
    }
}

impl Nft {
    pub fn new(exec: Box<dyn Exec>) -> Nft {
        Nft { exec, sections: BTreeMap::new(), known: None, generation: 0 }
    }

    /// The next commit reads the table from the kernel instead of trusting what the writer last wrote.
    pub fn refresh(&mut self) {
        self.known = None;
        self.generation += 1;
    }

    /// Where the writer is: see [`Nft::adopt`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Takes `read` (the table as the kernel showed it, `None`: no table), read without holding the writer
    /// while it was at `generation`, as what the table holds, so the next commit repairs whatever changed
    /// behind the writer's back. Refused (false) when a commit came in between: what that commit wrote is
    /// newer than the read.
    pub fn adopt(&mut self, read: Option<Current>, generation: u64) -> bool {
        if generation != self.generation {
            return false;
        }
        if read.is_some() && read == self.known {
            // The kernel holds what the writer knows: keep its copy, whose sets share their elements with
            // the owners' renders, and let the read go.
            return true;
        }
        self.known = read;
        self.generation += 1;
        true
    }

    /// Sets what `section.owner` wants; applied by the next [`Nft::commit`].
    pub fn stage(&mut self, section: Section) {
        self.sections.insert(section.owner, section);
    }

    /// Reads the table and applies, in one transaction, every change the sections need. Returns how many
    /// changes there were (0: the table already was as wanted, and nothing was written).
    pub fn commit(&mut self) -> Result<usize, NftError> {
        self.generation += 1;
        let cur = match self.known.take() {
            Some(k) => Some(k),
            None => self.exec.list()?.map(|j| parse(&j)).transpose()?,
        };
        let batch = plan(cur.as_ref(), self.sections.values());
        let changes = batch.0.len();
        if !batch.is_empty() {
            // On failure `known` stays empty: the next commit reads the kernel.
            self.exec.run(&batch)?;
        }
        drop(batch);
        self.known = Some(applied(cur.unwrap_or_default(), self.sections.values()));
        Ok(changes)
    }

    /// Removes `owner`'s objects; the table goes when nothing of anyone is left in it (cleanup). Returns
    /// whether the table was deleted.
    pub fn teardown(&mut self, owner: &'static str) -> Result<bool, NftError> {
        self.refresh();
        let owns = self.sections.remove(owner).map(|s| s.owns);
        let Some(cur) = self.exec.list()?.map(|j| parse(&j)).transpose()? else { return Ok(false) };
        if let Some(owns) = owns {
            let gone = Section { owner, sets: vec![], chains: vec![], owns };
            let gone = [gone];
            let batch = plan(Some(&cur), &gone);
            if !batch.is_empty() {
                self.exec.run(&batch)?;
            }
        }
        let left = self.exec.list()?.map(|j| parse(&j)).transpose()?.unwrap_or_default();
        if left.sets.is_empty() && left.chains.is_empty() { self.exec.delete_table() } else { Ok(false) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn el(v: &[&str]) -> Elements {
        Arc::new(v.iter().map(|s| Element::net(s.parse().unwrap())).collect())
    }

    fn nat_like(pools: &[&str]) -> Section {
        Section {
            owner: "nat",
            sets: vec![Set {
                name: "pools4".into(),
                ty: "ipv4_addr".into(),
                interval: true,
                map: None,
                elements: el(pools),
            }],
            chains: vec![Arc::new(Chain {
                name: "postrouting".into(),
                hook: Some(Hook {
                    ty: "nat".into(),
                    hook: "postrouting".into(),
                    priority: 100,
                    policy: "accept".into(),
                }),
                rules: vec!["ip saddr @pools4 masquerade".into()],
            })],
            owns: |n| n == "pools4" || n == "postrouting" || n == "old",
        }
    }

    /// What the kernel would hold after `s` were applied.
    fn applied(s: &Section) -> Current {
        Current {
            sets: s
                .sets
                .iter()
                .map(|x| {
                    (
                        x.name.clone(),
                        CurrentSet {
                            ty: x.ty.clone(),
                            interval: x.interval,
                            map: x.map.clone(),
                            elements: x.elements.clone(),
                        },
                    )
                })
                .collect(),
            chains: s
                .chains
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        CurrentChain {
                            hook: c.hook.clone(),
                            rules: c.rules.iter().map(|r| Some(rule_hash(r))).collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_missing_table_is_built_in_one_batch() {
        let want = [nat_like(&["10.0.0.0/16"])];
        let b = plan(None, &want);
        assert_eq!(
            b.render(),
            "add table inet tabby\n\
             add set inet tabby pools4 { type ipv4_addr; flags interval; }\n\
             add chain inet tabby postrouting { type nat hook postrouting priority 100; policy accept; }\n\
             add element inet tabby pools4 { 10.0.0.0/16 }\n\
             add rule inet tabby postrouting ip saddr @pools4 masquerade comment \"tabby:59a96ebf309b7c4f\"\n"
        );
    }

    #[test]
    fn only_changes_go_out_and_other_owners_are_left_alone() {
        let want = nat_like(&["10.0.0.0/16", "10.2.0.0/16"]);
        let mut cur = applied(&nat_like(&["10.0.0.0/16", "10.1.0.0/16"]));
        // Another owner's chain and set, and a stale object of ours.
        cur.chains.insert("pol-x".into(), CurrentChain { hook: None, rules: vec![Some(1)] });
        cur.sets.insert("pol-s".into(), CurrentSet::default());
        cur.sets.insert("old".into(), CurrentSet::default());
        assert_eq!(
            plan(Some(&cur), std::slice::from_ref(&want)).0,
            vec![
                Change::DeleteElements("pools4", vec![&Element::net("10.1.0.0/16".parse().unwrap())]),
                Change::DeleteSet("old"),
                Change::AddElements("pools4", vec![&Element::net("10.2.0.0/16".parse().unwrap())]),
            ]
        );
        assert!(plan(Some(&applied(&want)), &[want]).is_empty());
    }

    #[test]
    fn changed_or_foreign_rules_refill_the_chain_and_a_lost_chain_comes_back() {
        let want = nat_like(&["10.0.0.0/16"]);
        let mut cur = applied(&want);
        cur.chains.get_mut("postrouting").unwrap().rules.push(None);
        let b = plan(Some(&cur), std::slice::from_ref(&want));
        assert_eq!(b.0[0], Change::FlushChain("postrouting"));
        assert_eq!(b.0[1], Change::AddRule("postrouting", "ip saddr @pools4 masquerade"));
        cur.chains.clear();
        let b = plan(Some(&cur), std::slice::from_ref(&want));
        assert!(matches!(&b.0[0], Change::AddChain(c) if c.name == "postrouting"));
        assert_eq!(b.0.len(), 2);
        // The chain is added bare; its rules follow one by one.
        let text = b.render();
        assert!(
            text.starts_with(
                "add chain inet tabby postrouting { type nat hook postrouting priority 100; policy accept; }\n\
                 add rule inet tabby postrouting ip saddr @pools4 masquerade comment \"tabby:"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        // A set of another type is recreated, and the chains using it refilled.
        let mut cur = applied(&want);
        cur.sets.get_mut("pools4").unwrap().interval = false;
        let r = plan(Some(&cur), &[want]).render();
        assert!(r.starts_with("flush chain inet tabby postrouting\ndelete set inet tabby pools4\nadd set"), "{r}");
        assert!(r.contains("add element inet tabby pools4 { 10.0.0.0/16 }") && r.contains("add rule"), "{r}");
    }

    #[test]
    fn addresses_are_canonical_and_nft_json_parses() {
        assert_eq!(Element::net("10.9.9.9/32".parse().unwrap()).as_str(), "10.9.9.9");
        assert_eq!(Element::net("fd00::1/128".parse().unwrap()).as_str(), "fd00::1");
        assert_eq!(Element::net("10.0.0.7/16".parse().unwrap()).as_str(), "10.0.0.0/16");
        let j = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"tabby"}},
          {"set":{"family":"inet","name":"pools4","table":"tabby","type":"ipv4_addr","flags":["interval"],
            "elem":[{"prefix":{"addr":"10.0.0.0","len":16}},"10.9.9.9",{"range":["10.1.0.1","10.1.0.9"]}]}},
          {"set":{"family":"inet","name":"pools6","table":"tabby","type":"ipv6_addr","flags":["interval"]}},
          {"chain":{"family":"inet","table":"tabby","name":"postrouting","type":"nat","hook":"postrouting","prio":100,"policy":"accept"}},
          {"rule":{"family":"inet","table":"tabby","chain":"postrouting","handle":5,"comment":"tabby:00","expr":[]}},
          {"rule":{"family":"inet","table":"tabby","chain":"postrouting","handle":6,"expr":[]}},
          {"rule":{"family":"inet","table":"tabby","chain":"postrouting","handle":7,"comment":"someone's","expr":[]}}]}"#;
        let c = parse(j).unwrap();
        assert_eq!(
            c.sets["pools4"].elements.iter().map(Element::as_str).collect::<Vec<_>>(),
            vec!["10.0.0.0/16", "10.1.0.1-10.1.0.9", "10.9.9.9"]
        );
        assert!(c.sets["pools6"].interval && c.sets["pools6"].elements.is_empty());
        // Only the writer's tags count; a rule without one or with anyone else's comment is `None`.
        assert_eq!(c.chains["postrouting"].rules, vec![Some(0), None, None]);
        assert_eq!(c.chains["postrouting"].hook.as_ref().map(|h| h.priority), Some(100));
        assert!(parse("nope").is_err());
    }

    /// An [`Exec`] that holds the table as parsed state and records every batch.
    #[derive(Default)]
    pub struct Fake {
        pub table: Option<Current>,
        pub batches: Vec<String>,
        pub fail: Option<NftError>,
        /// How many times the table was read.
        pub lists: usize,
    }

    impl Exec for std::sync::Arc<std::sync::Mutex<Fake>> {
        fn list(&mut self) -> Result<Option<String>, NftError> {
            let mut f = self.lock().unwrap();
            f.lists += 1;
            if let Some(e) = &f.fail {
                return Err(e.clone());
            }
            Ok(f.table.as_ref().map(render_json))
        }

        fn run(&mut self, batch: &Batch<'_>) -> Result<(), NftError> {
            self.lock().unwrap().batches.push(batch.render());
            Ok(())
        }

        fn delete_table(&mut self) -> Result<bool, NftError> {
            Ok(self.lock().unwrap().table.take().is_some())
        }
    }

    fn render_json(c: &Current) -> String {
        let mut items = vec![serde_json::json!({"table": {"family": "inet", "name": "tabby"}})];
        for (n, s) in &c.sets {
            let elem: Vec<&str> = s.elements.iter().map(Element::as_str).collect();
            items.push(serde_json::json!({"set": {"name": n, "type": s.ty, "flags": if s.interval { vec!["interval"] } else { vec![] }, "elem": elem}}));
        }
        for (n, ch) in &c.chains {
            items.push(serde_json::json!({"chain": {"name": n}}));
            for r in &ch.rules {
                items.push(serde_json::json!({"rule": {"chain": n, "comment": r}}));
            }
        }
        serde_json::json!({ "nftables": items }).to_string()
    }

    #[test]
    fn the_writer_commits_one_batch_and_nothing_when_nothing_changed() {
        let fake = std::sync::Arc::new(std::sync::Mutex::new(Fake::default()));
        let mut w = Nft::new(Box::new(fake.clone()));
        w.stage(Section { chains: vec![], ..nat_like(&["10.0.0.0/16"]) });
        assert_eq!(w.commit().unwrap(), 3);
        assert!(fake.lock().unwrap().batches[0].starts_with("add table inet tabby\n"));
        // The writer knows what it wrote: nothing to do, and the table is not read back.
        assert_eq!(w.commit().unwrap(), 0);
        w.stage(Section { chains: vec![], ..nat_like(&["10.0.0.0/16", "10.1.0.0/16"]) });
        assert_eq!(w.commit().unwrap(), 1);
        assert_eq!(fake.lock().unwrap().batches[1], "add element inet tabby pools4 { 10.1.0.0/16 }\n");
        assert_eq!(fake.lock().unwrap().lists, 1, "one read, before the first commit only");
        // A refresh reads the kernel again; a failure is reported.
        fake.lock().unwrap().fail = Some(NftError::Spawn("No such file or directory (os error 2)".into()));
        w.refresh();
        assert!(w.commit().is_err());
        fake.lock().unwrap().fail = None;
        fake.lock().unwrap().table = Some(applied(&Section { chains: vec![], ..nat_like(&["10.0.0.0/16"]) }));
        assert_eq!(w.commit().unwrap(), 1, "after a failure the kernel is read: one element is missing there");
    }

    #[test]
    fn a_read_back_is_adopted_only_when_no_commit_came_in_between() {
        let fake = std::sync::Arc::new(std::sync::Mutex::new(Fake::default()));
        let mut w = Nft::new(Box::new(fake.clone()));
        let want = || Section { chains: vec![], ..nat_like(&["10.0.0.0/16", "10.1.0.0/16"]) };
        w.stage(want());
        w.commit().unwrap();
        // Someone deletes an element by hand; a read is taken, then a commit comes before it is handed over.
        let drifted = applied(&Section { chains: vec![], ..nat_like(&["10.0.0.0/16"]) });
        let at = w.generation();
        assert_eq!(w.commit().unwrap(), 0, "the writer still trusts what it wrote");
        assert!(!w.adopt(Some(drifted.clone()), at), "stale: a commit came in between");
        // A fresh read is adopted and the next commit repairs the drift, without reading the kernel itself.
        let at = w.generation();
        assert!(w.adopt(Some(drifted), at));
        assert_eq!(w.commit().unwrap(), 1);
        assert_eq!(fake.lock().unwrap().batches.last().unwrap(), "add element inet tabby pools4 { 10.1.0.0/16 }\n");
        assert_eq!(fake.lock().unwrap().lists, 1, "only the first commit read the table");
        // A read equal to what the writer knows leaves its copy (and the generation) as it is.
        let at = w.generation();
        assert!(w.adopt(Some(applied(&want())), at));
        assert_eq!(w.generation(), at, "an equal read is let go");
        assert_eq!(w.commit().unwrap(), 0);
        // A read that found no table: the next commit reads the kernel and makes it.
        let at = w.generation();
        assert!(w.adopt(None, at));
        w.commit().unwrap();
        assert_eq!(fake.lock().unwrap().lists, 2);
    }

    #[test]
    fn maps_and_concatenations_round_trip() {
        let j = r#"{"nftables":[{"table":{"family":"inet","name":"tabby"}},
          {"set":{"name":"np4","table":"tabby","type":["ipv4_addr","inet_proto","inet_service"],
            "elem":[{"concat":["10.0.0.3",253,1]},{"concat":["10.0.0.1","tcp",80]}]}},
          {"map":{"name":"disp","table":"tabby","type":"ifname","map":"verdict",
            "elem":[["tbyabc",{"goto":{"target":"ep-1"}}]]}}]}"#;
        let c = parse(j).unwrap();
        assert_eq!(c.sets["np4"].ty, "ipv4_addr . inet_proto . inet_service");
        assert!(c.sets["np4"].elements.contains(&Element::raw("10.0.0.1 . tcp . 80")));
        assert!(c.sets["np4"].elements.contains(&Element::raw("10.0.0.3 . 253 . 1")));
        assert_eq!(c.sets["disp"].map.as_deref(), Some("verdict"));
        assert!(c.sets["disp"].elements.contains(&Element::map_entry("tbyabc", "goto ep-1")));
        let want = Set {
            name: "disp".into(),
            ty: "ifname".into(),
            interval: false,
            map: Some("verdict".into()),
            elements: Arc::new([Element::map_entry("tbyxyz", "goto ep-1")].into()),
        };
        let sec = Section { owner: "p", sets: vec![want], chains: vec![], owns: |n| n == "disp" };
        assert_eq!(
            plan(Some(&c), &[sec]).render(),
            "delete element inet tabby disp { \"tbyabc\" }\nadd element inet tabby disp { \"tbyxyz\" : goto ep-1 }\n"
        );
    }
}
