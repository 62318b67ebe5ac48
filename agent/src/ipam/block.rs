//! Pure block math over [`IPAMBlockSpec`]: ordinals ↔ addresses, assigning and releasing, and the
//! consistency rules every written block keeps (allocations, unallocated and attributes agree).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tabby_api::ipam::{AllocationAttribute, IPAMBlockSpec, host_affinity};

/// Keys of [`AllocationAttribute::secondary`].
pub const ATTR_NODE: &str = "node";
pub const ATTR_NAMESPACE: &str = "namespace";
pub const ATTR_POD: &str = "pod";
pub const ATTR_TYPE: &str = "type";

/// Number of addresses in a block.
pub fn size(cidr: &IpNet) -> usize {
    1usize << (cidr.max_prefix_len() - cidr.prefix_len())
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
    for (o, _) in &released {
        spec.allocations[*o] = None;
        spec.unallocated.push(*o as i32);
    }
    if !released.is_empty() {
        compact(spec);
        spec.sequence_number += 1;
    }
    released
}

/// Drops attributes no allocation refers to, renumbering the rest.
fn compact(spec: &mut IPAMBlockSpec) {
    let used: BTreeSet<i32> = spec.allocations.iter().flatten().copied().collect();
    let mut remap = BTreeMap::new();
    let mut attributes = Vec::with_capacity(used.len());
    for old in used {
        if let Some(a) = spec.attributes.get(old as usize) {
            remap.insert(old, attributes.len() as i32);
            attributes.push(a.clone());
        }
    }
    for a in spec.allocations.iter_mut().flatten() {
        *a = remap.get(a).copied().unwrap_or(*a);
    }
    spec.attributes = attributes;
}

/// Checks the invariants: one entry per address; every free ordinal exactly once in `unallocated` and
/// nothing else there; every allocation names an existing attribute; every attribute is used.
pub fn check_consistency(spec: &IPAMBlockSpec) -> Result<(), String> {
    let cidr: IpNet = spec.cidr.parse().map_err(|e| format!("cidr {}: {e}", spec.cidr))?;
    if spec.allocations.len() != size(&cidr) {
        return Err(format!("{}: {} allocations for {} addresses", spec.cidr, spec.allocations.len(), size(&cidr)));
    }
    let free: BTreeSet<i32> =
        spec.allocations.iter().enumerate().filter(|(_, a)| a.is_none()).map(|(i, _)| i as i32).collect();
    let listed: BTreeSet<i32> = spec.unallocated.iter().copied().collect();
    if listed.len() != spec.unallocated.len() {
        return Err(format!("{}: unallocated lists an ordinal twice", spec.cidr));
    }
    if free != listed {
        return Err(format!("{}: free ordinals {free:?} but unallocated {listed:?}", spec.cidr));
    }
    let used: BTreeSet<i32> = spec.allocations.iter().flatten().copied().collect();
    if let Some(bad) = used.iter().find(|i| **i < 0 || **i as usize >= spec.attributes.len()) {
        return Err(format!("{}: allocation points at attribute {bad} of {}", spec.cidr, spec.attributes.len()));
    }
    if used.len() != spec.attributes.len() {
        return Err(format!("{}: {} attributes but {} in use", spec.cidr, spec.attributes.len(), used.len()));
    }
    Ok(())
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
}
