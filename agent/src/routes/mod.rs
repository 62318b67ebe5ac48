//! Routes Tabby owns in the kernel's main table, all with protocol [`RTPROT_TABBY`] (80, named `tabby` in
//! `/etc/iproute2/rt_protos.d/tabby.conf`, the number the CNI plugin gives pod host routes).
//!
//! Three sources feed one desired table: local pod routes (`<pod>/32 dev tby…`, added by the CNI plugin,
//! repaired here, removed when the pod's allocation is gone), blackholes for the blocks this node owns,
//! and remote routes (learned over BGP, or computed for VXLAN). [`RouteTable`] merges them; [`run`] keeps the
//! kernel equal to the merge: incrementally for the prefixes that changed, fully on link events and on
//! a resync timer, and within milliseconds for a Tabby route someone deletes (netlink events).
//!
//! Memory: every table maps a packed prefix ([`prefixmap`]) to an interned `Arc<Target>` (a handful of
//! distinct targets, one per next hop or device), so a learned IPv4 route costs 16 octets in the table
//! of its source and nothing more: there is no copy of what the kernel holds. A changed prefix is marked
//! dirty with the route it had (what the last pass left in the kernel); an incremental pass puts each
//! dirty prefix that is wanted and deletes exactly that earlier route for one that is not, so a route
//! someone else put there meanwhile (the CNI plugin's, for a pod) is left alone. Full passes compare
//! against a kernel dump. Bulk kernel work (batched changes, dumps, events) goes through
//! [`fib`]; link queries through `crate::kernel`.

pub mod fib;
pub mod pods;
pub mod prefixmap;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::Notify;

use prefixmap::{PrefixMap, PrefixSet};

/// The route protocol number of every route Tabby installs (shared with the CNI plugin through tabby-wire).
pub use tabby_wire::RTPROT_TABBY;

/// What a route to one prefix does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `blackhole <prefix>`: drop here (unallocated addresses of our blocks).
    Blackhole,
    /// `<prefix> dev <name> scope link`: a local pod behind its host veth.
    Dev(String),
    /// `<prefix> via <gw> [dev <name>] [onlink]`: another node's pods.
    Via { gw: IpAddr, dev: Option<String>, onlink: bool },
}

/// Which subsystem wants a route; on a conflict the lower one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Local = 0,
    Blackhole = 1,
    /// Computed from the API: VXLAN and CrossSubnet direct routes.
    Tunnel = 2,
    /// Learned over BGP.
    Remote = 3,
}

const SOURCES: [Source; 4] = [Source::Local, Source::Blackhole, Source::Tunnel, Source::Remote];

/// A route as read from the kernel, with its interface resolved to a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpNet,
    /// Shared between the routes of a dump (a full table has a handful of distinct targets).
    pub target: Arc<Target>,
    /// The interface index the kernel reports (for deletion).
    pub oif: Option<u32>,
}

/// Whether the kernel's `actual` route realises `want`. A gateway route without a device in the desired
/// state matches whatever interface the kernel resolved.
pub fn matches(want: &Target, actual: &Target) -> bool {
    match (want, actual) {
        (Target::Via { gw: g1, dev: None, onlink: o1 }, Target::Via { gw: g2, onlink: o2, .. }) => g1 == g2 && o1 == o2,
        _ => want == actual,
    }
}

/// The changes that turn `actual` into `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Routes to add or replace.
    pub put: Vec<(IpNet, Arc<Target>)>,
    /// Kernel routes to delete.
    pub del: Vec<KernelRoute>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.del.is_empty()
    }

    pub fn len(&self) -> usize {
        self.put.len() + self.del.len()
    }
}

/// Full diff: every desired route missing or different in `actual` is put; every Tabby route of
/// `actual` that is not desired is deleted, except those `keep` protects (remote routes during the
/// start-up grace, so a restarted agent does not drop traffic before BGP has converged). Routes whose
/// device does not exist (`has_dev` false) are skipped: the kernel would refuse them.
pub fn diff<'a>(
    desired: &dyn Fn(&IpNet) -> Option<&'a Arc<Target>>,
    desired_all: impl Iterator<Item = (IpNet, &'a Arc<Target>)>,
    actual: &[KernelRoute],
    has_dev: &dyn Fn(&str) -> bool,
    keep: &dyn Fn(&KernelRoute) -> bool,
) -> Diff {
    let mut plan = Diff::default();
    let mut seen = PrefixSet::default();
    for r in actual {
        match desired(&r.dst) {
            Some(want) if matches(want, &r.target) && !seen.contains(&r.dst) => {
                seen.add(r.dst);
            }
            Some(_) => {
                // A duplicate or a different route to a desired prefix: replaced below (or, for a
                // duplicate, removed).
                if seen.contains(&r.dst) {
                    plan.del.push(r.clone());
                }
            }
            None if keep(r) => {}
            None => plan.del.push(r.clone()),
        }
    }
    let mut put: Vec<(IpNet, Arc<Target>)> = desired_all
        .filter(|(dst, _)| !seen.contains(dst))
        .filter(|(_, t)| installable(t, has_dev))
        .map(|(d, t)| (d, t.clone()))
        .collect();
    put.sort_by_key(|(d, _)| *d);
    plan.put = put;
    plan.del.sort_by_key(|r| r.dst);
    plan
}

fn installable(t: &Target, has_dev: &dyn Fn(&str) -> bool) -> bool {
    match t {
        Target::Blackhole => true,
        Target::Dev(d) => has_dev(d),
        Target::Via { dev: Some(d), .. } => has_dev(d),
        Target::Via { dev: None, .. } => true,
    }
}

/// Counts for NodeStatus.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub local: usize,
    pub blackhole: usize,
    pub remote: usize,
}

#[derive(Default)]
struct State {
    sources: [PrefixMap<Arc<Target>>; 4],
    /// Prefixes whose desired route changed since the last pass, each with the route it had then
    /// (what the kernel holds as far as the passes know; `None`: none).
    dirty: PrefixMap<Option<Arc<Target>>>,
    full: bool,
    /// Desired routes the last pass that touched them could not install (failed, or their device is
    /// missing); every other desired route is in the kernel as far as the passes know.
    missing: PrefixSet,
    /// The shared copy of every target in use.
    targets: HashSet<Arc<Target>>,
    /// Which sources have been set at least once since the agent started.
    seeded: [bool; 4],
    errors: u64,
    synced: bool,
}

impl State {
    /// Whether the table knows what the API wants yet. Until the first pass has set the local, blackhole
    /// and tunnel routes, a full pass only adds: a restarted agent must not delete the pod routes and
    /// blackholes the previous one left (or the CNI plugin added) before it has computed them again —
    /// that gap dropped packets during rolling updates.
    fn seeded(&self) -> bool {
        [Source::Local, Source::Blackhole, Source::Tunnel].iter().all(|s| self.seeded[*s as usize])
    }

    fn merged(&self, dst: &IpNet) -> Option<&Arc<Target>> {
        self.sources.iter().find_map(|m| m.get(dst))
    }

    /// [`Self::merged`] with the routes of source `slot` taken from `instead`.
    fn merged_with<'a>(
        &'a self,
        dst: &IpNet,
        slot: usize,
        instead: &'a PrefixMap<Arc<Target>>,
    ) -> Option<&'a Arc<Target>> {
        self.sources.iter().enumerate().find_map(|(i, m)| if i == slot { instead.get(dst) } else { m.get(dst) })
    }

    /// Marks `dst` for the next pass; `was` is the route it had. A prefix already marked keeps the
    /// route it had when first marked: that is the one still in the kernel.
    fn mark(&mut self, dst: IpNet, was: Option<Arc<Target>>) {
        if !self.dirty.contains(&dst) {
            self.dirty.insert(dst, was);
        }
    }

    /// The source whose route to `dst` wins.
    fn winner(&self, dst: &IpNet) -> Option<Source> {
        SOURCES.into_iter().find(|s| self.sources[*s as usize].contains(dst))
    }

    /// Every desired route once: each source's prefixes that no earlier source claims.
    fn merged_all(&self) -> impl Iterator<Item = (IpNet, &Arc<Target>)> + '_ {
        SOURCES
            .into_iter()
            .flat_map(move |s| self.sources[s as usize].iter().filter(move |(k, _)| self.winner(k) == Some(s)))
    }

    /// The shared copy of `t`; targets nobody uses any more are dropped now and then.
    fn intern(&mut self, t: Target) -> Arc<Target> {
        if let Some(a) = self.targets.get(&t) {
            return a.clone();
        }
        if self.targets.len() >= 1024 && self.targets.len().is_power_of_two() {
            self.targets.retain(|a| Arc::strong_count(a) > 1);
        }
        let a = Arc::new(t);
        self.targets.insert(a.clone());
        a
    }
}

/// The desired routes of every subsystem, shared with the reconciler task.
#[derive(Clone)]
pub struct RouteTable {
    state: Arc<Mutex<State>>,
    kick: Arc<Notify>,
    hold_remote_until: Arc<Mutex<Option<Instant>>>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    pub fn new() -> RouteTable {
        RouteTable {
            state: Arc::new(Mutex::new(State { full: true, ..Default::default() })),
            kick: Arc::new(Notify::new()),
            hold_remote_until: Arc::new(Mutex::new(None)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything `source` wants.
    pub fn set(&self, source: Source, routes: HashMap<IpNet, Target>) {
        let mut st = self.lock();
        let slot = source as usize;
        let old = std::mem::take(&mut st.sources[slot]);
        let mut dirty: Vec<(IpNet, Option<Arc<Target>>)> = Vec::new();
        for (k, v) in &routes {
            if old.get(k).is_none_or(|o| **o != *v) {
                dirty.push((*k, st.merged_with(k, slot, &old).cloned()));
            }
        }
        for k in old.keys() {
            if !routes.contains_key(&k) {
                dirty.push((k, st.merged_with(&k, slot, &old).cloned()));
            }
        }
        let mut new = PrefixMap::default();
        for (k, v) in routes {
            new.insert(k, st.intern(v));
        }
        drop(old);
        st.sources[source as usize] = new;
        let was_seeded = st.seeded();
        st.seeded[source as usize] = true;
        // Now the routes kept so far can be checked against what is wanted.
        let changed = !dirty.is_empty() || (!was_seeded && st.seeded());
        if !was_seeded && st.seeded() {
            st.full = true;
        }
        for (k, was) in dirty {
            st.mark(k, was);
        }
        drop(st);
        if changed {
            self.kick.notify_one();
        }
    }

    /// Applies changes to what `source` wants (`None` removes a prefix).
    pub fn update(&self, source: Source, changes: impl IntoIterator<Item = (IpNet, Option<Target>)>) {
        let mut st = self.lock();
        let mut changed = false;
        for (k, v) in changes {
            let was = st.merged(&k).cloned();
            let differs = match v {
                Some(t) => {
                    let t = st.intern(t);
                    st.sources[source as usize].insert(k, t.clone()).is_none_or(|o| !Arc::ptr_eq(&o, &t))
                }
                None => st.sources[source as usize].remove(&k).is_some(),
            };
            if differs {
                st.mark(k, was);
                changed = true;
            }
        }
        drop(st);
        if changed {
            self.kick.notify_one();
        }
    }

    /// Asks for a full pass (kernel dump and diff).
    pub fn resync(&self) {
        self.lock().full = true;
        self.kick.notify_one();
    }

    /// A Tabby route disappeared from the kernel: put it back if it is wanted.
    pub fn deleted(&self, dst: IpNet) {
        let mut st = self.lock();
        if st.merged(&dst).is_some() {
            st.mark(dst, None);
            drop(st);
            self.kick.notify_one();
        }
    }

    /// Remote routes not (yet) desired survive full passes until `until` (agent restart grace).
    pub fn hold_remote(&self, until: Option<Instant>) {
        let mut h = self.hold_remote_until.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *h != until;
        *h = until;
        drop(h);
        if changed {
            self.resync();
        }
    }

    pub fn counts(&self) -> Counts {
        count(&self.lock())
    }

    /// Passes that failed to apply some change.
    pub fn errors(&self) -> u64 {
        self.lock().errors
    }

    /// True once a full pass has completed.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// The merged desired table (for tests and status).
    pub fn desired(&self) -> HashMap<IpNet, Target> {
        self.lock().merged_all().map(|(k, v)| (k, Target::clone(v))).collect()
    }

    fn remote_held(&self) -> bool {
        self.hold_remote_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| Instant::now() < t)
    }
}

/// Writes the protocol name file (best effort: a read-only /etc only costs the name in `ip route`).
pub fn write_proto_name(path: &std::path::Path) {
    let want = format!("{RTPROT_TABBY}\ttabby\n");
    if std::fs::read_to_string(path).is_ok_and(|s| s == want) {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, want) {
        tracing::debug!(error = %e, path = %path.display(), "cannot name the route protocol");
    }
}

/// The batched netlink writer, used from blocking threads (a 100k-route batch keeps the kernel busy
/// for a while; the async workers stay free meanwhile).
type SharedFib = Arc<Mutex<fib::Fib>>;

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error("netlink route dump: {0}")]
    Dump(std::io::Error),
    #[error("route writer task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs `f` with the writer on a blocking thread.
async fn with_fib<T: Send + 'static>(
    f: &SharedFib,
    job: impl FnOnce(&mut fib::Fib) -> T + Send + 'static,
) -> Result<T, PassError> {
    let f = f.clone();
    Ok(tokio::task::spawn_blocking(move || job(&mut f.lock().unwrap_or_else(|p| p.into_inner()))).await?)
}

/// Keeps the kernel equal to `table` until the task is dropped: on table changes, netlink events and
/// every `resync`.
pub async fn run(table: RouteTable, resync: Duration) {
    let opened = crate::kernel::Kernel::open().map_err(|e| e.to_string()).and_then(|k| {
        let f = fib::Fib::open().map_err(|e| e.to_string())?;
        Ok((k, Arc::new(Mutex::new(f))))
    });
    let (k, fib) = match opened {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "netlink unavailable; routes are not programmed");
            return;
        }
    };
    let t2 = table.clone();
    tokio::spawn(fib::watch(move |ev| match ev {
        fib::Event::RouteDeleted(dst) => t2.deleted(dst),
        fib::Event::Link => t2.resync(),
        fib::Event::Lost => {
            tracing::debug!("netlink events lost; resyncing routes");
            t2.resync()
        }
    }));
    let mut next_full = tokio::time::Instant::now();
    loop {
        let full = {
            let mut st = table.lock();
            let f = st.full || tokio::time::Instant::now() >= next_full;
            st.full = false;
            f
        };
        let started = Instant::now();
        let res = if full { full_pass(&table, &k, &fib).await } else { incremental_pass(&table, &k, &fib).await };
        crate::reconcile::observe("routes", started, res.is_ok());
        match res {
            Ok(n) if n > 0 => {
                tracing::debug!(full, changes = n, elapsed_ms = started.elapsed().as_millis() as u64, "routes")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "programming routes");
                table.lock().errors += 1;
                table.lock().full = true;
            }
        }
        if full {
            next_full = tokio::time::Instant::now() + resync;
        }
        let pending = {
            let st = table.lock();
            !st.dirty.is_empty() || st.full
        };
        if pending {
            continue;
        }
        tokio::select! {
            _ = table.kick.notified() => {}
            _ = tokio::time::sleep_until(next_full) => {}
        }
    }
}

async fn full_pass(table: &RouteTable, k: &crate::kernel::Kernel, fib: &SharedFib) -> Result<usize, PassError> {
    let links = Arc::new(k.links().await?);
    let l2 = links.clone();
    let actual = with_fib(fib, move |f| f.dump(&l2)).await?.map_err(PassError::Dump)?;
    let names: HashSet<&str> = links.values().map(String::as_str).collect();
    let has_dev = |d: &str| names.contains(d);
    // Diffed under the lock, against the sources themselves: no copy of a 100k-route table.
    let (plan, seeded, mut missing) = {
        let mut st = table.lock();
        st.dirty = PrefixMap::default();
        let (hold, seeded) = (table.remote_held(), st.seeded());
        let keep = |r: &KernelRoute| !seeded || (hold && matches!(*r.target, Target::Via { .. }));
        let plan = diff(&|d| st.merged(d), st.merged_all(), &actual, &has_dev, &keep);
        let missing: PrefixSet =
            st.merged_all().filter(|(_, t)| !installable(t, &has_dev)).map(|(k, _)| (k, ())).collect();
        (plan, seeded, missing)
    };
    drop(actual);
    let n = plan.len();
    let failed = if plan.is_empty() {
        Vec::new()
    } else {
        let l2 = links.clone();
        with_fib(fib, move |f| f.apply(&plan, &l2)).await?
    };
    for (dst, _) in &failed {
        missing.add(*dst);
    }
    let mut st = table.lock();
    st.missing = missing;
    // Until seeded, kept routes are not known to be right: the full pass that seeding asks for decides.
    st.synced = seeded;
    if !failed.is_empty() {
        st.errors += 1;
        tracing::debug!(failed = failed.len(), first = ?failed.first(), "some routes did not apply");
    }
    Ok(n)
}

/// Changes one incremental pass takes on (a 64 KiB netlink batch holds ~1,300 of them).
const CHUNK: usize = 8192;

async fn incremental_pass(table: &RouteTable, k: &crate::kernel::Kernel, fib: &SharedFib) -> Result<usize, PassError> {
    let mut plan = {
        let mut st = table.lock();
        // At most CHUNK prefixes a pass, so a burst of 100k changes is never copied into one plan.
        let some: Vec<(IpNet, Option<Arc<Target>>)> =
            st.dirty.iter().take(CHUNK).map(|(k, was)| (k, was.clone())).collect();
        for (d, _) in &some {
            st.dirty.remove(d);
        }
        if st.dirty.is_empty() {
            // Replaced, not just emptied: the burst's capacity is not kept.
            st.dirty = PrefixMap::default();
        }
        let mut plan = Diff::default();
        for (d, was) in some {
            match (st.merged(&d), was) {
                (Some(w), _) => plan.put.push((d, w.clone())),
                // Exactly the route it had: one someone else put there meanwhile stays.
                (None, Some(was)) => plan.del.push(KernelRoute { dst: d, target: was, oif: None }),
                (None, None) => {}
            }
        }
        plan
    };
    if plan.is_empty() {
        return Ok(0);
    }
    let needs_links = plan
        .put
        .iter()
        .map(|(_, t)| t)
        .chain(plan.del.iter().map(|r| &r.target))
        .any(|t| !matches!(**t, Target::Blackhole | Target::Via { dev: None, .. }));
    let links = if needs_links { k.links().await? } else { BTreeMap::new() };
    // A pod route whose veth is not there (yet, or any more) is not an error: the link event of its
    // arrival triggers a full pass.
    let names: HashSet<&str> = links.values().map(String::as_str).collect();
    let mut skipped: Vec<IpNet> = Vec::new();
    plan.put.retain(|(d, t)| installable(t, &|n| names.contains(n)) || (skipped.push(*d), false).1);
    let n = plan.len();
    let (plan, failed) = with_fib(fib, move |f| {
        let failed = f.apply(&plan, &links);
        (plan, failed)
    })
    .await?;
    let mut st = table.lock();
    for d in plan.put.iter().map(|(d, _)| d).chain(plan.del.iter().map(|r| &r.dst)) {
        st.missing.remove(d);
    }
    for d in skipped.into_iter().chain(failed.iter().map(|(d, _)| *d)) {
        st.missing.add(d);
    }
    // Counts are computed when asked (O(routes)); recounting after every small pass made a large feed
    // quadratic.
    if !failed.is_empty() {
        st.errors += 1;
        tracing::debug!(failed = failed.len(), first = ?failed.first(), "some routes did not apply");
    }
    Ok(n)
}

/// Desired routes in the kernel (as far as the passes know), by the source that wins each.
fn count(st: &State) -> Counts {
    let mut c = Counts::default();
    for s in SOURCES {
        let n = st.sources[s as usize].keys().filter(|d| !st.missing.contains(d) && st.winner(d) == Some(s)).count();
        match s {
            Source::Local => c.local += n,
            Source::Blackhole => c.blackhole += n,
            Source::Tunnel | Source::Remote => c.remote += n,
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn via(gw: &str) -> Target {
        Target::Via { gw: gw.parse().unwrap(), dev: None, onlink: false }
    }

    fn kr(dst: &str, target: Target, oif: u32) -> KernelRoute {
        KernelRoute { dst: net(dst), target: Arc::new(target), oif: Some(oif) }
    }

    #[test]
    fn diff_adds_missing_replaces_changed_and_deletes_extra() {
        let desired: HashMap<IpNet, Arc<Target>> = [
            (net("10.0.1.0/26"), via("192.168.1.2")),
            (net("10.0.2.0/26"), via("192.168.1.3")),
            (net("10.0.0.0/26"), Target::Blackhole),
            (net("10.0.0.5/32"), Target::Dev("tbyaaa".into())),
            (net("10.0.0.6/32"), Target::Dev("tbygone".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k, Arc::new(v)))
        .collect();
        let actual = vec![
            kr(
                "10.0.1.0/26",
                Target::Via { gw: "192.168.1.2".parse().unwrap(), dev: Some("eth0".into()), onlink: false },
                2,
            ),
            kr("10.0.2.0/26", via("192.168.1.9"), 2),
            kr("10.0.9.0/26", via("192.168.1.9"), 2),
            kr("10.0.0.7/32", Target::Dev("tbyold".into()), 7),
        ];
        let plan =
            diff(&|d| desired.get(d), desired.iter().map(|(k, v)| (*k, v)), &actual, &|d| d == "tbyaaa", &|_| false);
        let put: Vec<(IpNet, Target)> = plan.put.iter().map(|(k, v)| (*k, Target::clone(v))).collect();
        assert_eq!(
            put,
            vec![
                (net("10.0.0.0/26"), Target::Blackhole),
                (net("10.0.0.5/32"), Target::Dev("tbyaaa".into())),
                (net("10.0.2.0/26"), via("192.168.1.3")),
            ]
        );
        let dels: Vec<IpNet> = plan.del.iter().map(|r| r.dst).collect();
        assert_eq!(dels, vec![net("10.0.0.7/32"), net("10.0.9.0/26")]);
    }

    #[test]
    fn diff_keeps_held_routes_and_is_empty_when_equal() {
        let desired: HashMap<IpNet, Arc<Target>> = [(net("10.0.1.0/26"), Arc::new(via("192.168.1.2")))].into();
        let actual = vec![kr("10.0.1.0/26", via("192.168.1.2"), 2), kr("10.0.3.0/26", via("192.168.1.4"), 2)];
        let d = || desired.iter().map(|(k, v)| (*k, v));
        let held = |r: &KernelRoute| matches!(*r.target, Target::Via { .. });
        assert!(diff(&|k| desired.get(k), d(), &actual, &|_| true, &held).is_empty());
        assert_eq!(diff(&|k| desired.get(k), d(), &actual, &|_| true, &|_| false).del.len(), 1);
    }

    #[test]
    fn table_merges_sources_with_local_first_and_tracks_dirty() {
        let t = RouteTable::new();
        t.set(Source::Remote, [(net("10.0.0.0/26"), via("1.1.1.1"))].into());
        // Nothing was in the kernel for it yet.
        assert_eq!(t.lock().dirty.get(&net("10.0.0.0/26")), Some(&None));
        t.lock().dirty = PrefixMap::default(); // as a pass would, having put it
        t.set(Source::Blackhole, [(net("10.0.0.0/26"), Target::Blackhole)].into());
        assert_eq!(t.desired().get(&net("10.0.0.0/26")), Some(&Target::Blackhole));
        t.update(Source::Blackhole, [(net("10.0.0.0/26"), None)]);
        assert_eq!(t.desired().get(&net("10.0.0.0/26")), Some(&via("1.1.1.1")));
        // Marked with the route it had when first marked: what the kernel still holds.
        let was =
            |t: &RouteTable| t.lock().dirty.get(&net("10.0.0.0/26")).cloned().flatten().map(|a| Target::clone(&a));
        assert_eq!(was(&t), Some(via("1.1.1.1")));
        t.lock().dirty = PrefixMap::default();
        t.update(Source::Remote, [(net("10.0.0.0/26"), None)]);
        assert_eq!(was(&t), Some(via("1.1.1.1")), "a withdrawal deletes exactly the route it had");
    }

    #[test]
    fn deletions_wait_until_local_blackhole_and_tunnel_routes_are_known() {
        let t = RouteTable::new();
        t.lock().full = false;
        t.set(Source::Local, HashMap::new());
        t.set(Source::Blackhole, [(net("10.0.0.0/26"), Target::Blackhole)].into());
        assert!(!t.lock().seeded() && !t.lock().full);
        t.set(Source::Tunnel, HashMap::new());
        assert!(t.lock().seeded() && t.lock().full, "seeding asks for a full pass");
        t.lock().full = false;
        t.set(Source::Tunnel, HashMap::new());
        assert!(!t.lock().full);
        // Shared targets: one allocation per distinct target.
        t.update(Source::Remote, (0..100u32).map(|i| (net(&format!("10.1.{i}.0/24")), Some(via("192.168.1.2")))));
        let st = t.lock();
        let a = st.sources[Source::Remote as usize].get(&net("10.1.0.0/24")).unwrap();
        let b = st.sources[Source::Remote as usize].get(&net("10.1.99.0/24")).unwrap();
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn counts_follow_the_winning_source_and_skip_routes_not_installed() {
        let t = RouteTable::new();
        t.set(Source::Local, [(net("10.0.0.5/32"), Target::Dev("tbyaaa".into()))].into());
        t.set(Source::Blackhole, [(net("10.0.0.0/26"), Target::Blackhole)].into());
        // The same prefix learned over BGP loses to the blackhole: counted once, as a blackhole.
        t.set(
            Source::Remote,
            [
                (net("10.0.0.0/26"), via("1.1.1.1")),
                (net("10.0.1.0/26"), via("1.1.1.1")),
                (net("10.0.2.0/26"), via("1.1.1.2")),
            ]
            .into(),
        );
        assert_eq!(t.counts(), Counts { local: 1, blackhole: 1, remote: 2 });
        t.lock().missing.add(net("10.0.2.0/26"));
        assert_eq!(t.counts(), Counts { local: 1, blackhole: 1, remote: 1 });
        let desired = t.desired();
        assert_eq!(desired.len(), 4);
        assert_eq!(desired[&net("10.0.0.0/26")], Target::Blackhole);
    }

    #[test]
    fn onlink_vxlan_routes_match_only_with_their_device() {
        let want = Target::Via { gw: "10.0.0.1".parse().unwrap(), dev: Some("vxlan.tabby".into()), onlink: true };
        let other = Target::Via { gw: "10.0.0.1".parse().unwrap(), dev: Some("eth0".into()), onlink: true };
        assert!(matches(&want, &want.clone()));
        assert!(!matches(&want, &other));
    }
}
