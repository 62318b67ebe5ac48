//! Pure block arithmetic: CIDRs, ordinals, usage counts and releasing one ordinal of an IPAMBlock.
//!
//! Calico's block model: `allocations[i]` is null when ordinal `i` is free, else an index into
//! `attributes`; `unallocated` lists the free ordinals; ordinal `i` is the address `cidr.network + i`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tabby_api::IPAMBlockSpec;
use tabby_api::ipam::AllocationAttribute;

/// A network in CIDR notation, held as a number so IPv4 and IPv6 share the arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    v6: bool,
    network: u128,
    prefix: u8,
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR such as 10.244.0.0/16")]
pub struct CidrError(pub String);

impl Cidr {
    /// Parses `addr/prefix`; host bits are cleared.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let (v6, bits) = match addr {
            IpAddr::V4(_) => (false, 32),
            IpAddr::V6(_) => (true, 128),
        };
        if prefix > bits {
            return Err(err());
        }
        let cidr = Cidr { v6, network: 0, prefix };
        Ok(Cidr { network: to_number(addr) & cidr.mask(), ..cidr })
    }

    fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn host_bits(&self) -> u32 {
        u32::from(self.bits() - self.prefix)
    }

    fn mask(&self) -> u128 {
        let all = if self.v6 { u128::MAX } else { u128::from(u32::MAX) };
        // checked_shl: a /0 clears every bit (a shift by the full width would overflow).
        all & all.checked_shl(self.host_bits()).unwrap_or(0)
    }

    /// Number of addresses; saturates at `u128::MAX` for `::/0`.
    pub fn size(&self) -> u128 {
        1u128.checked_shl(self.host_bits()).unwrap_or(u128::MAX)
    }

    /// The first address.
    pub fn network(&self) -> IpAddr {
        from_number(self.v6, self.network)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ordinal(ip).is_some()
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        self.v6 == other.v6 && other.prefix >= self.prefix && (other.network & self.mask()) == self.network
    }

    /// The ordinal of `ip` in this network: `ip - network`.
    pub fn ordinal(&self, ip: IpAddr) -> Option<u128> {
        if ip.is_ipv6() != self.v6 {
            return None;
        }
        let n = to_number(ip);
        ((n & self.mask()) == self.network).then(|| n - self.network)
    }

    /// The address at `ordinal`, if inside.
    pub fn address(&self, ordinal: u128) -> Option<IpAddr> {
        (ordinal < self.size()).then(|| from_number(self.v6, self.network + ordinal))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_number(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        // Callers only pass numbers inside an IPv4 network, so the low 32 bits are the whole address.
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

/// The address with its host prefix, as pod networks are shown: `10.0.0.5/32`, `fd00::5/128`.
pub fn host_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// `used (pct%)` of `total`, as `calicoctl ipam show` prints cells: `81 (16%)`.
pub fn count_with_percent(count: u128, total: u128) -> String {
    let pct = if total == 0 { 0 } else { ((count as f64) * 100.0 / (total as f64)).round() as u64 };
    format!("{count} ({pct}%)")
}

/// One allocated ordinal of a block.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocated<'a> {
    /// The ordinal.
    pub ordinal: usize,
    /// The address.
    pub ip: IpAddr,
    /// Who holds it; `None` when the index points outside `attributes` (an inconsistent block).
    pub attribute: Option<&'a AllocationAttribute>,
}

impl<'a> Allocated<'a> {
    /// The handle the allocation is released by.
    pub fn handle(&self) -> Option<&'a str> {
        self.attribute.and_then(|a| a.handle_id.as_deref())
    }

    /// A `secondary` attribute: `node`, `namespace`, `pod` or `type`.
    pub fn secondary(&self, key: &str) -> Option<&'a str> {
        self.attribute.and_then(|a| a.secondary.get(key)).map(String::as_str)
    }
}

/// The allocated ordinals of a block, with their addresses and attributes.
pub fn allocated<'a>(cidr: &Cidr, spec: &'a IPAMBlockSpec) -> Vec<Allocated<'a>> {
    spec.allocations
        .iter()
        .enumerate()
        .filter_map(|(ordinal, index)| {
            let index = (*index)?;
            let ip = cidr.address(ordinal as u128)?;
            let attribute = usize::try_from(index).ok().and_then(|i| spec.attributes.get(i));
            Some(Allocated { ordinal, ip, attribute })
        })
        .collect()
}

/// Number of allocated ordinals.
pub fn in_use(spec: &IPAMBlockSpec) -> usize {
    spec.allocations.iter().filter(|a| a.is_some()).count()
}

/// Why an ordinal cannot be released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0} is not in block {1}")]
    OutsideBlock(IpAddr, String),
    #[error("{0} is not allocated")]
    NotAllocated(IpAddr),
}

/// Frees the allocation of `ip` in the block: nulls its ordinal, appends the ordinal to `unallocated`
/// (so it is reused last), drops the attribute when nothing else refers to it (re-indexing the rest) and
/// bumps `sequenceNumber`. Returns the handle the allocation belonged to.
pub fn release(spec: &mut IPAMBlockSpec, cidr: &Cidr, ip: IpAddr) -> Result<Option<String>, ReleaseError> {
    let ordinal = cidr
        .ordinal(ip)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(|| ReleaseError::OutsideBlock(ip, cidr.to_string()))?;
    let index = spec.allocations.get(ordinal).copied().flatten().ok_or(ReleaseError::NotAllocated(ip))?;
    spec.allocations[ordinal] = None;
    let ord = ordinal as i32; // ordinal < allocations.len(), and blocks hold at most 2^12 addresses (/20).
    spec.unallocated.retain(|&o| o != ord);
    spec.unallocated.push(ord);
    let handle = usize::try_from(index).ok().and_then(|i| spec.attributes.get(i)).and_then(|a| a.handle_id.clone());
    if !spec.allocations.contains(&Some(index)) && (index as usize) < spec.attributes.len() {
        spec.attributes.remove(index as usize);
        for a in spec.allocations.iter_mut().flatten() {
            if *a > index {
                *a -= 1;
            }
        }
    }
    spec.sequence_number += 1;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn attr(handle: &str, pod: &str) -> AllocationAttribute {
        AllocationAttribute {
            handle_id: Some(handle.into()),
            secondary: BTreeMap::from([("pod".into(), pod.into()), ("namespace".into(), "default".into())]),
        }
    }

    #[test]
    fn cidr_parse_and_math() {
        let c = Cidr::parse("10.244.1.0/26").unwrap();
        assert_eq!(c.size(), 64);
        assert_eq!(c.to_string(), "10.244.1.0/26");
        assert_eq!(c.ordinal(ip("10.244.1.5")), Some(5));
        assert_eq!(c.ordinal(ip("10.244.1.64")), None);
        assert_eq!(c.address(63), Some(ip("10.244.1.63")));
        assert_eq!(c.address(64), None);
        assert!(!c.contains(ip("fd00::1")));
        assert_eq!(Cidr::parse("10.244.1.7/24").unwrap().to_string(), "10.244.1.0/24");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("nope/8").is_err());
        let v6 = Cidr::parse("fd00:10:244::/122").unwrap();
        assert_eq!(v6.size(), 64);
        assert!(!v6.contains(ip("10.0.0.0")));
        assert_eq!(v6.address(3), Some(ip("fd00:10:244::3")));
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().size(), 1 << 32);
        assert_eq!(Cidr::parse("::/0").unwrap().size(), u128::MAX);
        assert!(Cidr::parse("::/0").unwrap().contains(ip("fd00::1")));
    }

    #[test]
    fn containment() {
        let pool = Cidr::parse("10.244.0.0/16").unwrap();
        assert!(pool.contains_cidr(&Cidr::parse("10.244.3.64/26").unwrap()));
        assert!(!pool.contains_cidr(&Cidr::parse("10.245.0.0/26").unwrap()));
        assert!(!pool.contains_cidr(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(!pool.contains_cidr(&Cidr::parse("fd00::/122").unwrap()));
    }

    #[test]
    fn percentages() {
        assert_eq!(count_with_percent(81, 512), "81 (16%)");
        assert_eq!(count_with_percent(0, 64), "0 (0%)");
        assert_eq!(count_with_percent(64, 64), "64 (100%)");
        assert_eq!(count_with_percent(0, 0), "0 (0%)");
        assert_eq!(host_network(ip("10.0.0.1")), "10.0.0.1/32");
        assert_eq!(host_network(ip("fd00::1")), "fd00::1/128");
    }

    fn block() -> (Cidr, IPAMBlockSpec) {
        let cidr = Cidr::parse("10.0.0.0/30").unwrap();
        let spec = IPAMBlockSpec {
            cidr: cidr.to_string(),
            allocations: vec![Some(0), Some(1), Some(0), None],
            unallocated: vec![3],
            attributes: vec![attr("h0", "a"), attr("h1", "b")],
            sequence_number: 7,
            ..Default::default()
        };
        (cidr, spec)
    }

    #[test]
    fn allocated_lists_addresses_and_attributes() {
        let (cidr, spec) = block();
        let all = allocated(&cidr, &spec);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].ip, ip("10.0.0.1"));
        assert_eq!(all[1].handle(), Some("h1"));
        assert_eq!(all[2].secondary("pod"), Some("a"));
        assert_eq!(in_use(&spec), 3);
    }

    #[test]
    fn release_compacts_attributes() {
        let (cidr, mut spec) = block();
        // Attribute 0 is still used by ordinal 2: kept.
        assert_eq!(release(&mut spec, &cidr, ip("10.0.0.0")).unwrap(), Some("h0".into()));
        assert_eq!(spec.allocations, vec![None, Some(1), Some(0), None]);
        assert_eq!(spec.unallocated, vec![3, 0]);
        assert_eq!(spec.attributes.len(), 2);
        // Last user of attribute 0: removed, attribute 1 becomes 0.
        assert_eq!(release(&mut spec, &cidr, ip("10.0.0.2")).unwrap(), Some("h0".into()));
        assert_eq!(spec.allocations, vec![None, Some(0), None, None]);
        assert_eq!(spec.attributes, vec![attr("h1", "b")]);
        assert_eq!(spec.unallocated, vec![3, 0, 2]);
        assert_eq!(spec.sequence_number, 9);
        assert_eq!(release(&mut spec, &cidr, ip("10.0.0.3")), Err(ReleaseError::NotAllocated(ip("10.0.0.3"))));
        assert!(matches!(release(&mut spec, &cidr, ip("10.0.1.0")), Err(ReleaseError::OutsideBlock(..))));
        assert_eq!(spec.sequence_number, 9);
    }
}
