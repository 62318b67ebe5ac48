//! The encapsulations of pod traffic between nodes: [`vxlan`] (`vxlan.tabby`, no BGP needed) and
//! [`ipip`] (`tunl0`, routes learned over BGP), with what they share: their overheads on the pod MTU and
//! the CrossSubnet test.

pub mod ipip;
pub mod vxlan;

use std::net::IpAddr;

use ipnet::IpNet;

/// VXLAN over an IPv4 underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) octets.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN over an IPv6 underlay (outer IPv6 is 40 octets).
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// IPIP: one outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;

/// The pod MTU overhead of the encapsulations in use (the largest one: a node may carry both).
pub fn overhead(vxlan: bool, ipip: bool) -> u32 {
    let v = if vxlan { VXLAN_OVERHEAD_V4 } else { 0 };
    let i = if ipip { IPIP_OVERHEAD } else { 0 };
    v.max(i)
}

/// Whether `other` is in this node's subnet (`mine` carries the prefix length): CrossSubnet routes such
/// next hops directly. Unknown means different.
pub fn same_subnet(mine: Option<IpNet>, other: IpAddr) -> bool {
    mine.is_some_and(|m| m.contains(&other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_overhead_is_the_largest_encapsulation() {
        assert_eq!(overhead(false, false), 0);
        assert_eq!(overhead(false, true), 20);
        assert_eq!(overhead(true, false), 50);
        assert_eq!(overhead(true, true), 50);
        let ifaces = [crate::kernel::Iface { index: 2, name: "eth0".into(), up: true, mtu: 1500, addrs: vec![] }];
        assert_eq!(crate::kernel::underlay_mtu(&ifaces) - overhead(false, true), 1480);
    }

    #[test]
    fn same_subnet_needs_a_known_address() {
        let mine: Option<IpNet> = Some("192.168.1.1/24".parse().unwrap());
        assert!(same_subnet(mine, "192.168.1.9".parse().unwrap()));
        assert!(!same_subnet(mine, "192.168.2.9".parse().unwrap()));
        assert!(!same_subnet(None, "192.168.1.9".parse().unwrap()));
    }
}
