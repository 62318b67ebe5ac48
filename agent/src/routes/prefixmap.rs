//! A map keyed by IP prefix, packed for memory: the route tables hold one entry per learned prefix
//! (100k and more from a BGP feed), and an `IpNet` key is 18 octets padded to 24 beside a pointer.
//! IPv4 prefixes pack into a `u64` (an entry with an 8-octet value is 16 octets), IPv6 into 17 octets.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tabby_bgp::hash::FastMap;

/// Packed IPv6 prefix: address octets and length (alignment 1).
type V6Key = ([u8; 16], u8);

fn v4_key(n: &Ipv4Net) -> u64 {
    (u64::from(u32::from(n.network())) << 8) | u64::from(n.prefix_len())
}

fn v4_net(k: u64) -> IpNet {
    // Invariant: keys are packed from valid prefixes, so the length is at most 32.
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from((k >> 8) as u32), (k & 0xff) as u8).expect("valid packed IPv4 prefix"))
}

fn v6_key(n: &Ipv6Net) -> V6Key {
    (n.network().octets(), n.prefix_len())
}

fn v6_net(k: &V6Key) -> IpNet {
    // Invariant: keys are packed from valid prefixes, so the length is at most 128.
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(k.0), k.1).expect("valid packed IPv6 prefix"))
}

/// Prefix → `V`. Keys are stored with host bits cleared (as the kernel reports routes).
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    v4: FastMap<u64, V>,
    v6: FastMap<V6Key, V>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap { v4: FastMap::default(), v6: FastMap::default() }
    }
}

impl<V> PrefixMap<V> {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn get(&self, k: &IpNet) -> Option<&V> {
        match k {
            IpNet::V4(n) => self.v4.get(&v4_key(n)),
            IpNet::V6(n) => self.v6.get(&v6_key(n)),
        }
    }

    pub fn contains(&self, k: &IpNet) -> bool {
        self.get(k).is_some()
    }

    pub fn insert(&mut self, k: IpNet, v: V) -> Option<V> {
        match k {
            IpNet::V4(n) => self.v4.insert(v4_key(&n), v),
            IpNet::V6(n) => self.v6.insert(v6_key(&n), v),
        }
    }

    pub fn remove(&mut self, k: &IpNet) -> Option<V> {
        match k {
            IpNet::V4(n) => self.v4.remove(&v4_key(n)),
            IpNet::V6(n) => self.v6.remove(&v6_key(n)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> + '_ {
        let v4 = self.v4.iter().map(|(k, v)| (v4_net(*k), v));
        v4.chain(self.v6.iter().map(|(k, v)| (v6_net(k), v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.iter().map(|(k, _)| k)
    }
}

/// A set of prefixes, packed like [`PrefixMap`].
pub type PrefixSet = PrefixMap<()>;

impl PrefixSet {
    /// Adds `k`; true if it was not there.
    pub fn add(&mut self, k: IpNet) -> bool {
        self.insert(k, ()).is_none()
    }
}

impl<V> FromIterator<(IpNet, V)> for PrefixMap<V> {
    fn from_iter<I: IntoIterator<Item = (IpNet, V)>>(iter: I) -> Self {
        let mut m = PrefixMap::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn both_families_round_trip() {
        let mut m: PrefixMap<u32> = PrefixMap::default();
        for (i, p) in ["10.0.0.0/26", "10.0.0.0/24", "0.0.0.0/0", "2001:db8::/64", "2001:db8::1/128"].iter().enumerate()
        {
            assert!(m.insert(net(p), i as u32).is_none());
        }
        assert_eq!(m.len(), 5);
        assert_eq!(m.get(&net("10.0.0.0/24")), Some(&1));
        assert_eq!(m.get(&net("2001:db8::1/128")), Some(&4));
        assert!(!m.contains(&net("10.0.0.0/25")));
        let mut keys: Vec<String> = m.keys().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(keys, ["0.0.0.0/0", "10.0.0.0/24", "10.0.0.0/26", "2001:db8::/64", "2001:db8::1/128"]);
        assert_eq!(m.remove(&net("2001:db8::/64")), Some(3));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn ipv4_entries_stay_small() {
        // One word of key and one of value: the table's memory per learned route.
        assert_eq!(std::mem::size_of::<(u64, std::sync::Arc<()>)>(), 16);
        assert_eq!(std::mem::size_of::<V6Key>(), 17);
    }
}
