//! What this node originates over BGP: its blocks as aggregates (never the /32s inside them), addresses
//! it borrowed from other nodes' blocks, and the service CIDRs of the BGPConfiguration — minus pools with
//! `disableBGPExport`.

use std::borrow::Borrow;
use std::collections::BTreeSet;

use ipnet::IpNet;
use tabby_api::bgp::BGPConfigurationSpec;
use tabby_api::ipam::block::{ATTR_NODE, addr_at, attribute_at};
use tabby_api::ipam::{IPAMBlock, IPPool};

/// What `me` advertises: its blocks (aggregates; never the /32s inside them), addresses it borrowed
/// from other nodes' blocks (/32, /128), and the service CIDRs of the BGPConfiguration.
pub fn advertisements<B: Borrow<IPAMBlock>, P: Borrow<IPPool>>(
    me: &str,
    blocks: &[B],
    pools: &[P],
    cfg: &BGPConfigurationSpec,
) -> BTreeSet<IpNet> {
    let host = format!("host:{me}");
    let exportable = |cidr: &IpNet| {
        !pools.iter().map(Borrow::borrow).any(|p: &IPPool| {
            p.spec.disable_bgp_export && p.spec.cidr.parse::<IpNet>().is_ok_and(|pc| pc.contains(cidr))
        })
    };
    let mut out = BTreeSet::new();
    for b in blocks.iter().map(Borrow::borrow).filter(|b: &&IPAMBlock| !b.spec.deleted) {
        let Ok(cidr) = b.spec.cidr.parse::<IpNet>() else { continue };
        if !exportable(&cidr) {
            continue;
        }
        if b.spec.affinity.as_deref() == Some(host.as_str()) {
            out.insert(cidr);
            continue;
        }
        for ord in 0..b.spec.allocations.len() {
            if attribute_at(&b.spec, ord).is_some_and(|a| a.secondary.get(ATTR_NODE).map(String::as_str) == Some(me)) {
                out.insert(IpNet::from(addr_at(&cidr, ord)));
            }
        }
    }
    for c in cfg.service_cluster_ips.iter().chain(&cfg.service_external_ips).chain(&cfg.service_load_balancer_ips) {
        if let Ok(n) = c.cidr.parse::<IpNet>() {
            out.insert(n.trunc());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_blocks_borrowed_addresses_and_services() {
        use tabby_api::ipam::{AllocationAttribute, IPAMBlockSpec};
        let mut mine = IPAMBlock::new("b1", IPAMBlockSpec::default());
        mine.spec.cidr = "10.0.0.0/26".into();
        mine.spec.affinity = Some("host:a".into());
        mine.spec.allocations = vec![Some(0); 64];
        let mut theirs = IPAMBlock::new("b2", IPAMBlockSpec::default());
        theirs.spec.cidr = "10.0.0.64/26".into();
        theirs.spec.affinity = Some("host:b".into());
        theirs.spec.allocations = vec![None; 64];
        theirs.spec.allocations[3] = Some(0);
        theirs.spec.allocations[4] = Some(1);
        theirs.spec.attributes = vec![
            AllocationAttribute {
                handle_id: Some("h".into()),
                secondary: [(ATTR_NODE.to_string(), "a".to_string())].into(),
            },
            AllocationAttribute {
                handle_id: Some("i".into()),
                secondary: [(ATTR_NODE.to_string(), "b".to_string())].into(),
            },
        ];
        let mut cfg = BGPConfigurationSpec::default();
        cfg.service_cluster_ips.push(tabby_api::bgp::ServiceCidr { cidr: "10.96.0.0/16".into() });
        let got: Vec<String> =
            advertisements::<_, IPPool>("a", &[mine, theirs], &[], &cfg).iter().map(|n| n.to_string()).collect();
        assert_eq!(got, vec!["10.0.0.0/26", "10.0.0.67/32", "10.96.0.0/16"]);
    }
}
