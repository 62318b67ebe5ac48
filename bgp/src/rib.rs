//! Routing tables: per prefix the paths learned from each peer (the Adj-RIBs-In) with the best
//! one first (the Loc-RIB), and the per-peer Adj-RIB-Out. Pure data structures, no I/O.
//!
//! Memory: attributes are interned (one `Arc` per distinct set), IPv4 prefixes are keyed by a
//! packed `u64`, and a prefix with a single path stores it inline (16 octets).

use std::collections::HashSet;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::best::{self, Candidate, Source};
use crate::hash::{FastMap, MixState};
use crate::message::PathAttrs;
use crate::types::{Family, Prefix};

/// Identifies the source of a path; [`LOCAL`] is this speaker.
pub type PeerId = u32;
/// Source ID of locally originated routes.
pub const LOCAL: PeerId = 0;

/// The attributes of a route: next hop plus path attributes (`attrs.next_hop` is not used).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteAttrs {
    /// Next hop (unspecified for local routes: "this speaker").
    pub next_hop: IpAddr,
    /// Path attributes.
    pub attrs: PathAttrs,
}

/// One path in the RIB.
#[derive(Debug, Clone)]
pub struct Path {
    /// Interned attributes.
    pub attrs: Arc<RouteAttrs>,
    /// Where the path came from.
    pub peer: PeerId,
    /// Kept for a restarting peer (RFC 4724) until refreshed or swept.
    pub stale: bool,
}

/// The paths of one prefix. 16 octets: the common single-path case is stored inline, and
/// several paths live behind one pointer (best first).
#[derive(Debug, Clone)]
enum Paths {
    One(Path),
    /// Best first.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Path>>),
}

impl Paths {
    fn best(&self) -> &Path {
        match self {
            Paths::One(p) => p,
            // Invariant: a `Many` always holds at least two paths.
            Paths::Many(v) => &v[0],
        }
    }

    fn as_slice(&self) -> &[Path] {
        match self {
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v,
        }
    }
}

trait Key: Copy + Eq + Hash {
    fn of(p: &Prefix) -> Self;
    fn prefix(self) -> Prefix;
}

impl Key for u64 {
    fn of(p: &Prefix) -> u64 {
        match p.addr() {
            IpAddr::V4(a) => (u64::from(u32::from(a)) << 8) | u64::from(p.len()),
            IpAddr::V6(_) => u64::MAX,
        }
    }

    fn prefix(self) -> Prefix {
        let a = Ipv4Addr::from((self >> 8) as u32);
        // Invariant: keys are built from valid prefixes, so the length is at most 32.
        Prefix::new(IpAddr::V4(a), (self & 0xff) as u8).expect("valid IPv4 key")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct V6Key(u64, u64, u8);

impl Key for V6Key {
    fn of(p: &Prefix) -> V6Key {
        let v = match p.addr() {
            IpAddr::V6(a) => u128::from(a),
            IpAddr::V4(_) => 0,
        };
        V6Key((v >> 64) as u64, v as u64, p.len())
    }

    fn prefix(self) -> Prefix {
        let a = Ipv6Addr::from((u128::from(self.0) << 64) | u128::from(self.1));
        // Invariant: keys are built from valid prefixes, so the length is at most 128.
        Prefix::new(IpAddr::V6(a), self.2).expect("valid IPv6 key")
    }
}

/// Best-path summary handed out by lookups.
pub type Best = (PeerId, Arc<RouteAttrs>);

#[derive(Debug)]
struct Table<K: Key> {
    map: FastMap<K, Paths>,
}

impl<K: Key> Default for Table<K> {
    fn default() -> Self {
        Table { map: FastMap::with_hasher(MixState::default()) }
    }
}

fn same(a: &Path, b: &Path) -> bool {
    a.peer == b.peer && a.stale == b.stale && Arc::ptr_eq(&a.attrs, &b.attrs)
}

fn reselect(v: &mut [Path], sources: &FastMap<PeerId, Source>) {
    let fallback = Source {
        local: false,
        ebgp: false,
        router_id: Ipv4Addr::UNSPECIFIED,
        address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let i = best::select(v.iter().map(|p| Candidate {
        attrs: &p.attrs.attrs,
        source: sources.get(&p.peer).unwrap_or(&fallback),
        stale: p.stale,
    }));
    if let Some(i) = i {
        v.swap(0, i);
    }
}

impl<K: Key> Table<K> {
    /// Inserts or replaces `path`; returns (best changed, new prefix for this peer).
    fn insert(&mut self, key: K, path: Path, sources: &FastMap<PeerId, Source>) -> (bool, bool) {
        use std::collections::hash_map::Entry;
        match self.map.entry(key) {
            Entry::Vacant(v) => {
                v.insert(Paths::One(path));
                (true, true)
            }
            Entry::Occupied(mut o) => {
                let paths = o.get_mut();
                let old = paths.best().clone();
                let mut added = false;
                match paths {
                    Paths::One(p) if p.peer == path.peer => *p = path,
                    Paths::One(p) => {
                        let mut v = vec![p.clone(), path];
                        reselect(&mut v, sources);
                        *paths = Paths::Many(Box::new(v));
                        added = true;
                    }
                    Paths::Many(v) => {
                        match v.iter_mut().find(|p| p.peer == path.peer) {
                            Some(p) => *p = path,
                            None => {
                                v.push(path);
                                added = true;
                            }
                        }
                        reselect(v, sources);
                    }
                }
                (!same(&old, paths.best()), added)
            }
        }
    }

    /// Removes the path of `peer`; returns (best changed, removed).
    fn remove(&mut self, key: K, peer: PeerId, sources: &FastMap<PeerId, Source>) -> (bool, bool) {
        let Some(paths) = self.map.get_mut(&key) else {
            return (false, false);
        };
        match paths {
            Paths::One(p) => {
                if p.peer != peer {
                    return (false, false);
                }
                self.map.remove(&key);
                (true, true)
            }
            Paths::Many(v) => {
                let Some(i) = v.iter().position(|p| p.peer == peer) else {
                    return (false, false);
                };
                v.remove(i);
                if v.len() == 1 {
                    // Invariant: exactly one element left.
                    let last = v.pop().expect("one path left");
                    *paths = Paths::One(last);
                } else {
                    reselect(v, sources);
                }
                (i == 0, true)
            }
        }
    }
}

/// Adj-RIBs-In and Loc-RIB for both families.
#[derive(Debug)]
pub struct Rib {
    v4: Table<u64>,
    v6: Table<V6Key>,
    sources: FastMap<PeerId, Source>,
    counts: FastMap<PeerId, usize>,
    interned: HashSet<Arc<RouteAttrs>, MixState>,
    intern_gc_at: usize,
}

impl Default for Rib {
    fn default() -> Self {
        Rib {
            v4: Table::default(),
            v6: Table::default(),
            sources: FastMap::default(),
            counts: FastMap::default(),
            interned: HashSet::default(),
            intern_gc_at: 1024,
        }
    }
}

macro_rules! on_table {
    ($self:ident, $prefix:expr, |$t:ident, $k:ident| $body:expr) => {
        match $prefix.family() {
            Family::Ipv4Unicast => {
                let $k = <u64 as Key>::of($prefix);
                let $t = &mut $self.v4;
                $body
            }
            Family::Ipv6Unicast => {
                let $k = <V6Key as Key>::of($prefix);
                let $t = &mut $self.v6;
                $body
            }
        }
    };
}

impl Rib {
    /// An empty RIB.
    pub fn new() -> Rib {
        Rib::default()
    }

    /// Registers (or updates) what best path selection needs to know about a peer.
    pub fn set_source(&mut self, peer: PeerId, source: Source) {
        self.sources.insert(peer, source);
    }

    /// Returns the shared copy of `attrs`, adding it if new.
    pub fn intern(&mut self, attrs: RouteAttrs) -> Arc<RouteAttrs> {
        if let Some(a) = self.interned.get(&attrs) {
            return a.clone();
        }
        if self.interned.len() >= self.intern_gc_at {
            self.interned.retain(|a| Arc::strong_count(a) > 1);
            self.intern_gc_at = (self.interned.len() * 2).max(1024);
        }
        let a = Arc::new(attrs);
        self.interned.insert(a.clone());
        a
    }

    /// Adds or replaces the path of `peer` for `prefix`; true if the best path changed.
    pub fn announce(&mut self, peer: PeerId, prefix: &Prefix, attrs: Arc<RouteAttrs>) -> bool {
        let path = Path { attrs, peer, stale: false };
        let sources = &self.sources;
        let (changed, added) = on_table!(self, prefix, |t, k| t.insert(k, path, sources));
        if added {
            *self.counts.entry(peer).or_default() += 1;
        }
        changed
    }

    /// Removes the path of `peer` for `prefix`; true if the best path changed.
    pub fn withdraw(&mut self, peer: PeerId, prefix: &Prefix) -> bool {
        let sources = &self.sources;
        let (changed, removed) = on_table!(self, prefix, |t, k| t.remove(k, peer, sources));
        if removed && let Some(c) = self.counts.get_mut(&peer) {
            *c -= 1;
        }
        changed
    }

    /// The best path for `prefix`.
    pub fn best(&self, prefix: &Prefix) -> Option<Best> {
        let paths = match prefix.family() {
            Family::Ipv4Unicast => self.v4.map.get(&<u64 as Key>::of(prefix)),
            Family::Ipv6Unicast => self.v6.map.get(&<V6Key as Key>::of(prefix)),
        }?;
        let b = paths.best();
        Some((b.peer, b.attrs.clone()))
    }

    /// All paths for `prefix`, best first.
    pub fn paths(&self, prefix: &Prefix) -> Vec<Path> {
        let paths = match prefix.family() {
            Family::Ipv4Unicast => self.v4.map.get(&<u64 as Key>::of(prefix)),
            Family::Ipv6Unicast => self.v6.map.get(&<V6Key as Key>::of(prefix)),
        };
        paths.map(|p| p.as_slice().to_vec()).unwrap_or_default()
    }

    /// Number of prefixes in the Loc-RIB of `family`.
    pub fn len(&self, family: Family) -> usize {
        match family {
            Family::Ipv4Unicast => self.v4.map.len(),
            Family::Ipv6Unicast => self.v6.map.len(),
        }
    }

    /// True if the RIB holds no route.
    pub fn is_empty(&self) -> bool {
        self.v4.map.is_empty() && self.v6.map.is_empty()
    }

    /// Number of prefixes for which `peer` has a path (its Adj-RIB-In size).
    pub fn count_from(&self, peer: PeerId) -> usize {
        self.counts.get(&peer).copied().unwrap_or(0)
    }

    /// Best paths of `family`, in no particular order.
    pub fn iter_best(&self, family: Family) -> Box<dyn Iterator<Item = (Prefix, &Path)> + '_> {
        match family {
            Family::Ipv4Unicast => Box::new(self.v4.map.iter().map(|(k, p)| (k.prefix(), p.best()))),
            Family::Ipv6Unicast => Box::new(self.v6.map.iter().map(|(k, p)| (k.prefix(), p.best()))),
        }
    }

    /// The Adj-RIB-In of `peer` for `family`: prefixes and their attributes.
    pub fn adj_in(&self, peer: PeerId, family: Family) -> Vec<(Prefix, Path)> {
        let pick = |ps: &Paths| ps.as_slice().iter().find(|p| p.peer == peer).cloned();
        match family {
            Family::Ipv4Unicast => self.v4.map.iter().filter_map(|(k, ps)| Some((k.prefix(), pick(ps)?))).collect(),
            Family::Ipv6Unicast => self.v6.map.iter().filter_map(|(k, ps)| Some((k.prefix(), pick(ps)?))).collect(),
        }
    }

    /// Marks every path of `peer` in `family` stale (graceful restart helper); returns how many.
    pub fn mark_stale(&mut self, peer: PeerId, family: Family) -> usize {
        fn mark<K: Key>(t: &mut Table<K>, peer: PeerId) -> usize {
            let mut n = 0;
            for ps in t.map.values_mut() {
                match ps {
                    Paths::One(p) if p.peer == peer => {
                        p.stale = true;
                        n += 1;
                    }
                    Paths::Many(v) => {
                        for p in v.iter_mut().filter(|p| p.peer == peer) {
                            p.stale = true;
                            n += 1;
                        }
                    }
                    _ => {}
                }
            }
            n
        }
        let n = match family {
            Family::Ipv4Unicast => mark(&mut self.v4, peer),
            Family::Ipv6Unicast => mark(&mut self.v6, peer),
        };
        // Stale paths may lose against fresh ones now.
        self.reselect_all(family);
        n
    }

    fn reselect_all(&mut self, family: Family) {
        fn go<K: Key>(t: &mut Table<K>, sources: &FastMap<PeerId, Source>) {
            for ps in t.map.values_mut() {
                if let Paths::Many(v) = ps {
                    reselect(v, sources);
                }
            }
        }
        match family {
            Family::Ipv4Unicast => go(&mut self.v4, &self.sources),
            Family::Ipv6Unicast => go(&mut self.v6, &self.sources),
        }
    }

    /// Removes the paths of `peer` in `family` (only the stale ones if `stale_only`); returns the
    /// prefixes whose best path changed.
    pub fn sweep(&mut self, peer: PeerId, family: Family, stale_only: bool) -> Vec<Prefix> {
        let doomed: Vec<Prefix> = {
            let hit = |ps: &Paths| ps.as_slice().iter().any(|p| p.peer == peer && (p.stale || !stale_only));
            match family {
                Family::Ipv4Unicast => self.v4.map.iter().filter(|(_, ps)| hit(ps)).map(|(k, _)| k.prefix()).collect(),
                Family::Ipv6Unicast => self.v6.map.iter().filter(|(_, ps)| hit(ps)).map(|(k, _)| k.prefix()).collect(),
            }
        };
        doomed.into_iter().filter(|p| self.withdraw(peer, p)).collect()
    }
}

/// What was advertised to one peer.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    map: FastMap<Prefix, Arc<RouteAttrs>>,
}

impl AdjRibOut {
    /// Records an advertisement; false if exactly that was already advertised.
    pub fn advertise(&mut self, prefix: Prefix, attrs: Arc<RouteAttrs>) -> bool {
        match self.map.insert(prefix, attrs.clone()) {
            Some(old) => !Arc::ptr_eq(&old, &attrs) && *old != *attrs,
            None => true,
        }
    }

    /// Records a withdrawal; false if the prefix was not advertised.
    pub fn withdraw(&mut self, prefix: &Prefix) -> bool {
        self.map.remove(prefix).is_some()
    }

    /// Number of advertised prefixes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if nothing is advertised.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets everything (session down).
    pub fn clear(&mut self) {
        self.map = FastMap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AsPath, Origin};

    fn src(id: u8) -> Source {
        Source {
            local: false,
            ebgp: false,
            router_id: Ipv4Addr::new(1, 1, 1, id),
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, id)),
        }
    }

    fn ra(lp: u32) -> RouteAttrs {
        RouteAttrs {
            next_hop: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            attrs: PathAttrs {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::default()),
                local_pref: Some(lp),
                ..PathAttrs::default()
            },
        }
    }

    #[test]
    fn best_path_follows_announcements_and_withdrawals() {
        let mut rib = Rib::new();
        rib.set_source(1, src(1));
        rib.set_source(2, src(2));
        let p: Prefix = "10.1.0.0/16".parse().unwrap();
        let a100 = rib.intern(ra(100));
        let a200 = rib.intern(ra(200));
        assert!(rib.announce(1, &p, a100.clone()));
        assert!(!rib.announce(1, &p, a100.clone()));
        assert!(rib.announce(2, &p, a200));
        assert_eq!(rib.best(&p).unwrap().0, 2);
        assert!(rib.withdraw(2, &p));
        assert_eq!(rib.best(&p).unwrap().0, 1);
        assert!(!rib.withdraw(2, &p));
        assert_eq!(rib.count_from(1), 1);
        assert_eq!(rib.count_from(2), 0);
        assert!(rib.withdraw(1, &p));
        assert!(rib.is_empty());
    }

    #[test]
    fn stale_paths_are_swept() {
        let mut rib = Rib::new();
        rib.set_source(1, src(1));
        let a = rib.intern(ra(100));
        let p1: Prefix = "10.1.0.0/16".parse().unwrap();
        let p2: Prefix = "2001:db8::/32".parse().unwrap();
        rib.announce(1, &p1, a.clone());
        rib.announce(1, &p2, a.clone());
        assert_eq!(rib.mark_stale(1, Family::Ipv4Unicast), 1);
        // Refreshed after the restart: no longer stale.
        rib.announce(1, &p1, a.clone());
        assert!(rib.sweep(1, Family::Ipv4Unicast, true).is_empty());
        rib.mark_stale(1, Family::Ipv4Unicast);
        assert_eq!(rib.sweep(1, Family::Ipv4Unicast, true), vec![p1]);
        assert_eq!(rib.len(Family::Ipv6Unicast), 1);
        assert_eq!(rib.iter_best(Family::Ipv6Unicast).next().unwrap().0, p2);
    }

    #[test]
    fn single_path_entries_stay_small() {
        // The size of the per-prefix value drives the RIB's memory use.
        assert_eq!(std::mem::size_of::<Paths>(), 16);
    }

    #[test]
    fn interning_shares_attributes() {
        let mut rib = Rib::new();
        let a = rib.intern(ra(100));
        let b = rib.intern(ra(100));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
