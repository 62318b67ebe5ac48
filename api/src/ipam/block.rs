//! Calico's block model as pure functions over [`IPAMBlockSpec`], the one copy the agent (allocation,
//! release, leak release) and the CLI (`ipam show|check|release`, `get wep`) share: ordinals ↔
//! addresses, assigning and releasing, and the consistency rules every written block keeps.
//!
//! `allocations[i]` is null when ordinal `i` is free, else an index into `attributes`; `unallocated`
//! lists the free ordinals in the order they are handed out; ordinal `i` is the address
//! `cidr.network + i`. A release puts the ordinal at the end of `unallocated` (reused last), drops every
//! attribute no allocation refers to any more (renumbering the rest) and bumps `sequenceNumber`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{AllocationAttribute, IPAMBlockSpec, host_affinity};

/// Keys of [`AllocationAttribute::secondary`].
pub const ATTR_NODE: &str = "node";
pub const ATTR_NAMESPACE: &str = "namespace";
pub const ATTR_POD: &str = "pod";
pub const ATTR_TYPE: &str = "type";

/// Number of addresses in a block.
pub fn size(cidr: &IpNet) -> usize {
    1usize << (cidr.max_prefix_len() - cidr.prefix_len())
}

/// Number of addresses in any network (a pool as well as a block); saturates at `u128::MAX` for `::/0`.
pub fn addresses(net: &IpNet) -> u128 {
    1u128.checked_shl(u32::from(net.max_prefix_len() - net.prefix_len())).unwrap_or(u128::MAX)
}

/// A CIDR as blocks and pools write them, host bits cleared (`10.244.1.7/24` is `10.244.1.0/24`).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

/// The address at `ordinal` of `cidr`.
pub fn addr_at(cidr: &IpNet, ordinal: usize) -> IpAddr {
    match cidr {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + ordinal as u32).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + ordinal as u128).into()),
    }
}

/// The ordinal of `addr` in `cidr`, if it is inside.
pub fn ordinal_of(cidr: &IpNet, addr: IpAddr) -> Option<usize> {
    if !cidr.contains(&addr) {
        return None;
    }
    Some(match (cidr, addr) {
        (IpNet::V4(n), IpAddr::V4(a)) => (u32::from(a) - u32::from(n.network())) as usize,
        (IpNet::V6(n), IpAddr::V6(a)) => (u128::from(a) - u128::from(n.network())) as usize,
        _ => return None,
    })
}

/// The block of `block_len` inside `pool` that holds `addr`.
pub fn block_containing(pool: &IpNet, block_len: u8, addr: IpAddr) -> Option<IpNet> {
    if !pool.contains(&addr) || block_len < pool.prefix_len() {
        return None;
    }
    IpNet::new(addr, block_len).ok().map(|n| n.trunc())
}

/// An empty block owned by `node`: every ordinal free, in order.
pub fn new_block(cidr: &IpNet, node: &str) -> IPAMBlockSpec {
    let n = size(cidr);
    IPAMBlockSpec {
        cidr: cidr.to_string(),
        affinity: Some(host_affinity(node)),
        allocations: vec![None; n],
        unallocated: (0..n as i32).collect(),
        attributes: Vec::new(),
        sequence_number: 0,
        deleted: false,
    }
}

/// Free addresses left.
pub fn free(spec: &IPAMBlockSpec) -> usize {
    spec.allocations.iter().filter(|a| a.is_none()).count()
}

fn attribute_index(spec: &mut IPAMBlockSpec, attr: AllocationAttribute) -> i32 {
    if let Some(i) = spec.attributes.iter().position(|a| *a == attr) {
        return i as i32;
    }
    spec.attributes.push(attr);
    (spec.attributes.len() - 1) as i32
}

/// Takes the next free ordinal (the head of `unallocated`) for `attr`.
pub fn assign_next(spec: &mut IPAMBlockSpec, attr: AllocationAttribute) -> Option<usize> {
    while !spec.unallocated.is_empty() {
        let ord = spec.unallocated.remove(0);
        let Ok(o) = usize::try_from(ord) else { continue };
        if spec.allocations.get(o).is_some_and(Option::is_none) {
            let idx = attribute_index(spec, attr);
            spec.allocations[o] = Some(idx);
            spec.sequence_number += 1;
            return Some(o);
        }
    }
    None
}

/// Takes a given ordinal for `attr`; false when it is taken or outside the block.
pub fn assign_ordinal(spec: &mut IPAMBlockSpec, ordinal: usize, attr: AllocationAttribute) -> bool {
    if !spec.allocations.get(ordinal).is_some_and(Option::is_none) {
        return false;
    }
    spec.unallocated.retain(|o| *o != ordinal as i32);
    let idx = attribute_index(spec, attr);
    spec.allocations[ordinal] = Some(idx);
    spec.sequence_number += 1;
    true
}

/// The handle an ordinal is allocated to.
pub fn handle_at(spec: &IPAMBlockSpec, ordinal: usize) -> Option<&str> {
    let idx = (*spec.allocations.get(ordinal)?)?;
    spec.attributes.get(usize::try_from(idx).ok()?)?.handle_id.as_deref()
}

/// The attribute of an ordinal.
pub fn attribute_at(spec: &IPAMBlockSpec, ordinal: usize) -> Option<&AllocationAttribute> {
    let idx = (*spec.allocations.get(ordinal)?)?;
    spec.attributes.get(usize::try_from(idx).ok()?)
}

/// Ordinals held by `handle`.
pub fn ordinals_of(spec: &IPAMBlockSpec, handle: &str) -> Vec<usize> {
    (0..spec.allocations.len()).filter(|o| handle_at(spec, *o) == Some(handle)).collect()
}

/// Releases the ordinals for which `pick(ordinal, attribute)` holds; released ordinals go to the end of
/// `unallocated` so they are reused last. Returns the released ordinals with their handles.
pub fn release_where(
    spec: &mut IPAMBlockSpec,
    mut pick: impl FnMut(usize, &AllocationAttribute) -> bool,
) -> Vec<(usize, Option<String>)> {
    let mut released = Vec::new();
    for o in 0..spec.allocations.len() {
        let Some(attr) = attribute_at(spec, o) else { continue };
        if pick(o, attr) {
            released.push((o, attr.handle_id.clone()));
        }
    }
    free_ordinals(spec, released.iter().map(|(o, _)| *o));
    released
}

/// Why an address cannot be released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0} is not in block {1}")]
    OutsideBlock(IpAddr, String),
    #[error("{0} is not allocated")]
    NotAllocated(IpAddr),
}

/// Releases the allocation of `ip` (`ipam release`). Returns the handle it belonged to.
pub fn release(spec: &mut IPAMBlockSpec, cidr: &IpNet, ip: IpAddr) -> Result<Option<String>, ReleaseError> {
    let ordinal = ordinal_of(cidr, ip).ok_or_else(|| ReleaseError::OutsideBlock(ip, cidr.to_string()))?;
    if !spec.allocations.get(ordinal).is_some_and(Option::is_some) {
        return Err(ReleaseError::NotAllocated(ip));
    }
    let handle = attribute_at(spec, ordinal).and_then(|a| a.handle_id.clone());
    free_ordinals(spec, [ordinal]);
    Ok(handle)
}

/// Frees `ordinals` (allocated ones): each goes to the end of `unallocated`, unused attributes are
/// dropped and the sequence number moves once.
fn free_ordinals(spec: &mut IPAMBlockSpec, ordinals: impl IntoIterator<Item = usize>) {
    let mut freed: Vec<i32> = Vec::new();
    for o in ordinals {
        if let Some(slot) = spec.allocations.get_mut(o).filter(|a| a.is_some()) {
            *slot = None;
            // Blocks hold at most 2^12 addresses (/20 for IPv4, /116 for IPv6): an ordinal fits.
            freed.push(o as i32);
        }
    }
    if freed.is_empty() {
        return;
    }
    let set: BTreeSet<i32> = freed.iter().copied().collect();
    spec.unallocated.retain(|o| !set.contains(o));
    spec.unallocated.extend(freed);
    compact(spec);
    spec.sequence_number += 1;
}

/// Drops attributes no allocation refers to, renumbering the rest.
fn compact(spec: &mut IPAMBlockSpec) {
    let used: BTreeSet<i32> = spec.allocations.iter().flatten().copied().collect();
    let mut remap = BTreeMap::new();
    let mut attributes = Vec::with_capacity(used.len());
    for old in used {
        if let Some(a) = usize::try_from(old).ok().and_then(|i| spec.attributes.get(i)) {
            remap.insert(old, attributes.len() as i32);
            attributes.push(a.clone());
        }
    }
    for a in spec.allocations.iter_mut().flatten() {
        *a = remap.get(a).copied().unwrap_or(*a);
    }
    spec.attributes = attributes;
}

/// One allocated ordinal of a block.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocated<'a> {
    pub ordinal: usize,
    pub ip: IpAddr,
    /// Who holds it; `None` when the index points outside `attributes` (an inconsistent block).
    pub attribute: Option<&'a AllocationAttribute>,
}

impl<'a> Allocated<'a> {
    /// The handle the allocation is released by.
    pub fn handle(&self) -> Option<&'a str> {
        self.attribute.and_then(|a| a.handle_id.as_deref())
    }

    /// A `secondary` attribute: [`ATTR_NODE`], [`ATTR_NAMESPACE`], [`ATTR_POD`] or [`ATTR_TYPE`].
    pub fn secondary(&self, key: &str) -> Option<&'a str> {
        self.attribute.and_then(|a| a.secondary.get(key)).map(String::as_str)
    }
}

/// The allocated ordinals of a block, with their addresses and attributes.
pub fn allocated<'a>(cidr: &IpNet, spec: &'a IPAMBlockSpec) -> Vec<Allocated<'a>> {
    let size = addresses(cidr);
    spec.allocations
        .iter()
        .enumerate()
        .filter(|(ordinal, _)| (*ordinal as u128) < size)
        .filter_map(|(ordinal, index)| {
            let index = (*index)?;
            let attribute = usize::try_from(index).ok().and_then(|i| spec.attributes.get(i));
            Some(Allocated { ordinal, ip: addr_at(cidr, ordinal), attribute })
        })
        .collect()
}

/// Number of allocated ordinals.
pub fn in_use(spec: &IPAMBlockSpec) -> usize {
    spec.allocations.iter().filter(|a| a.is_some()).count()
}

/// Every way the block breaks the model's rules, in words: one entry per address; every free ordinal
/// exactly once in `unallocated` and nothing else there; every allocation names an existing attribute;
/// every attribute is used. Empty for a consistent block.
pub fn inconsistencies(spec: &IPAMBlockSpec) -> Vec<String> {
    let mut found = Vec::new();
    let Some(cidr) = parse_cidr(&spec.cidr) else {
        return vec![format!("{:?} is not a CIDR such as 10.244.0.0/16", spec.cidr)];
    };
    let size = addresses(&cidr);
    if spec.allocations.len() as u128 != size {
        found.push(format!("has {} allocation entries for {size} addresses", spec.allocations.len()));
    }
    let attributes = spec.attributes.len();
    let mut referenced = BTreeSet::new();
    for (ordinal, index) in spec.allocations.iter().enumerate() {
        if let Some(index) = index {
            if *index < 0 || *index as usize >= attributes {
                found.push(format!("ordinal {ordinal} points at attribute {index}, but there are {attributes}"));
            } else {
                referenced.insert(*index as usize);
            }
        }
    }
    let mut seen = BTreeSet::new();
    for &o in &spec.unallocated {
        match usize::try_from(o).ok().and_then(|o| spec.allocations.get(o)) {
            None => found.push(format!("unallocated lists ordinal {o}, outside the block")),
            Some(Some(_)) => found.push(format!("ordinal {o} is both allocated and listed as unallocated")),
            Some(None) => {}
        }
        if !seen.insert(o) {
            found.push(format!("unallocated lists ordinal {o} twice"));
        }
    }
    for (ordinal, a) in spec.allocations.iter().enumerate() {
        if a.is_none() && !seen.contains(&(ordinal as i32)) {
            found.push(format!("ordinal {ordinal} is free but missing from unallocated"));
        }
    }
    for k in (0..attributes).filter(|k| !referenced.contains(k)) {
        found.push(format!("attribute {k} is used by no allocation"));
    }
    found
}

/// [`inconsistencies`] as a check: the first rule the block breaks, prefixed with its CIDR.
pub fn check_consistency(spec: &IPAMBlockSpec) -> Result<(), String> {
    match inconsistencies(spec).into_iter().next() {
        None => Ok(()),
        Some(e) => Err(format!("{}: {e}", spec.cidr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(h: &str) -> AllocationAttribute {
        AllocationAttribute { handle_id: Some(h.into()), secondary: Default::default() }
    }

    #[test]
    fn addresses_and_ordinals() {
        let c: IpNet = "10.244.1.64/26".parse().unwrap();
        assert_eq!(size(&c), 64);
        assert_eq!(addr_at(&c, 5).to_string(), "10.244.1.69");
        assert_eq!(ordinal_of(&c, "10.244.1.127".parse().unwrap()), Some(63));
        assert_eq!(ordinal_of(&c, "10.244.1.128".parse().unwrap()), None);
        let v6: IpNet = "fd00::40/122".parse().unwrap();
        assert_eq!(addr_at(&v6, 1).to_string(), "fd00::41");
        let pool: IpNet = "10.244.0.0/16".parse().unwrap();
        assert_eq!(block_containing(&pool, 26, "10.244.1.70".parse().unwrap()), Some(c));
        assert_eq!(block_containing(&pool, 26, "10.9.0.1".parse().unwrap()), None);
    }

    #[test]
    fn assign_release_reuse_last() {
        let c: IpNet = "10.0.0.0/30".parse().unwrap();
        let mut b = new_block(&c, "n1");
        assert_eq!(b.affinity.as_deref(), Some("host:n1"));
        assert_eq!(assign_next(&mut b, attr("a")), Some(0));
        assert_eq!(assign_next(&mut b, attr("b")), Some(1));
        assert!(assign_ordinal(&mut b, 3, attr("c")));
        assert!(!assign_ordinal(&mut b, 3, attr("d")));
        check_consistency(&b).unwrap();
        assert_eq!(ordinals_of(&b, "b"), vec![1]);
        let r = release_where(&mut b, |_, a| a.handle_id.as_deref() == Some("a"));
        assert_eq!(r, vec![(0, Some("a".into()))]);
        check_consistency(&b).unwrap();
        assert_eq!(b.attributes.len(), 2);
        assert_eq!(handle_at(&b, 3), Some("c"));
        // 2 was free before 0 was released: it comes first.
        assert_eq!(assign_next(&mut b, attr("e")), Some(2));
        assert_eq!(assign_next(&mut b, attr("f")), Some(0));
        assert_eq!(assign_next(&mut b, attr("g")), None);
        check_consistency(&b).unwrap();
        assert_eq!(free(&b), 0);
    }

    #[test]
    fn inconsistencies_are_found() {
        let c: IpNet = "10.0.0.0/30".parse().unwrap();
        let mut b = new_block(&c, "n1");
        b.unallocated.push(0);
        assert!(check_consistency(&b).is_err());
        let mut b = new_block(&c, "n1");
        b.allocations[1] = Some(0);
        assert!(check_consistency(&b).is_err());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod_attr(handle: &str, pod: &str) -> AllocationAttribute {
        AllocationAttribute {
            handle_id: Some(handle.into()),
            secondary: BTreeMap::from([("pod".into(), pod.into()), ("namespace".into(), "default".into())]),
        }
    }

    #[test]
    fn cidrs_and_sizes() {
        let c = parse_cidr("10.244.1.0/26").unwrap();
        assert_eq!(addresses(&c), 64);
        assert_eq!(c.to_string(), "10.244.1.0/26");
        assert_eq!(ordinal_of(&c, ip("10.244.1.5")), Some(5));
        assert_eq!(ordinal_of(&c, ip("10.244.1.64")), None);
        assert_eq!(addr_at(&c, 63), ip("10.244.1.63"));
        assert!(!c.contains(&ip("fd00::1")));
        assert_eq!(parse_cidr("10.244.1.7/24").unwrap().to_string(), "10.244.1.0/24");
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0.0").is_none());
        assert!(parse_cidr("nope/8").is_none());
        let v6 = parse_cidr("fd00:10:244::/122").unwrap();
        assert_eq!(addresses(&v6), 64);
        assert!(!v6.contains(&ip("10.0.0.0")));
        assert_eq!(addr_at(&v6, 3), ip("fd00:10:244::3"));
        assert_eq!(addresses(&parse_cidr("0.0.0.0/0").unwrap()), 1 << 32);
        assert_eq!(addresses(&parse_cidr("::/0").unwrap()), u128::MAX);
        assert!(parse_cidr("::/0").unwrap().contains(&ip("fd00::1")));
        let pool = parse_cidr("10.244.0.0/16").unwrap();
        assert!(pool.contains(&parse_cidr("10.244.3.64/26").unwrap()));
        assert!(!pool.contains(&parse_cidr("10.245.0.0/26").unwrap()));
        assert!(!pool.contains(&parse_cidr("10.0.0.0/8").unwrap()));
        assert!(!pool.contains(&parse_cidr("fd00::/122").unwrap()));
    }

    /// A /30 with .0 and .2 for h0 (one attribute), .1 for h1, .3 free.
    fn shared() -> (IpNet, IPAMBlockSpec) {
        let cidr = parse_cidr("10.0.0.0/30").unwrap();
        let spec = IPAMBlockSpec {
            cidr: cidr.to_string(),
            allocations: vec![Some(0), Some(1), Some(0), None],
            unallocated: vec![3],
            attributes: vec![pod_attr("h0", "a"), pod_attr("h1", "b")],
            sequence_number: 7,
            ..Default::default()
        };
        (cidr, spec)
    }

    #[test]
    fn allocated_lists_addresses_and_attributes() {
        let (cidr, spec) = shared();
        let all = allocated(&cidr, &spec);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].ip, ip("10.0.0.1"));
        assert_eq!(all[1].handle(), Some("h1"));
        assert_eq!(all[2].secondary("pod"), Some("a"));
        assert_eq!(in_use(&spec), 3);
    }

    #[test]
    fn release_compacts_attributes() {
        let (cidr, mut spec) = shared();
        // Attribute 0 is still used by ordinal 2: kept.
        assert_eq!(release(&mut spec, &cidr, ip("10.0.0.0")).unwrap(), Some("h0".into()));
        assert_eq!(spec.allocations, vec![None, Some(1), Some(0), None]);
        assert_eq!(spec.unallocated, vec![3, 0]);
        assert_eq!(spec.attributes.len(), 2);
        // Last user of attribute 0: removed, attribute 1 becomes 0.
        assert_eq!(release(&mut spec, &cidr, ip("10.0.0.2")).unwrap(), Some("h0".into()));
        assert_eq!(spec.allocations, vec![None, Some(0), None, None]);
        assert_eq!(spec.attributes, vec![pod_attr("h1", "b")]);
        assert_eq!(spec.unallocated, vec![3, 0, 2]);
        assert_eq!(spec.sequence_number, 9);
        assert_eq!(release(&mut spec, &cidr, ip("10.0.0.3")), Err(ReleaseError::NotAllocated(ip("10.0.0.3"))));
        assert!(matches!(release(&mut spec, &cidr, ip("10.0.1.0")), Err(ReleaseError::OutsideBlock(..))));
        assert_eq!(spec.sequence_number, 9);
        check_consistency(&spec).unwrap();
    }

    #[test]
    fn both_releases_leave_the_same_block() {
        // One release by address (the CLI) and one by predicate (the agent) write the same object.
        let (cidr, mut by_ip) = shared();
        let (_, mut by_pick) = shared();
        release(&mut by_ip, &cidr, ip("10.0.0.1")).unwrap();
        release_where(&mut by_pick, |o, _| o == 1);
        assert_eq!(by_ip, by_pick);
        // A block with an attribute nobody uses: every release drops it.
        let (_, mut stale) = shared();
        stale.attributes.push(pod_attr("h9", "z"));
        release(&mut stale, &cidr, ip("10.0.0.1")).unwrap();
        assert_eq!(stale, by_ip);
    }

    #[test]
    fn every_inconsistency_is_described() {
        let (_, mut b) = shared();
        assert!(inconsistencies(&b).is_empty());
        b.allocations = vec![Some(0), Some(5), Some(0), None, None];
        b.unallocated = vec![0, 2, 2, 9];
        assert_eq!(
            inconsistencies(&b),
            vec![
                "has 5 allocation entries for 4 addresses",
                "ordinal 1 points at attribute 5, but there are 2",
                "ordinal 0 is both allocated and listed as unallocated",
                "ordinal 2 is both allocated and listed as unallocated",
                "ordinal 2 is both allocated and listed as unallocated",
                "unallocated lists ordinal 2 twice",
                "unallocated lists ordinal 9, outside the block",
                "ordinal 3 is free but missing from unallocated",
                "ordinal 4 is free but missing from unallocated",
                "attribute 1 is used by no allocation",
            ]
        );
        assert_eq!(inconsistencies(&IPAMBlockSpec { cidr: "nope".into(), ..Default::default() }).len(), 1);
    }
}
