//! Routing policy: the built-in import checks and export rules (pure functions), and the
//! [`Policy`] hooks through which the embedding agent filters routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::best::DEFAULT_LOCAL_PREF;
use crate::message::{AsPath, Origin, PathAttrs, TreatAsWithdraw};
use crate::rib::{PeerId, RouteAttrs};
use crate::types::{Family, Prefix};

/// This speaker's identity, as the policy rules need it.
#[derive(Debug, Clone)]
pub struct Local {
    /// Local AS.
    pub asn: u32,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route reflector cluster ID, when reflecting.
    pub cluster_id: Option<Ipv4Addr>,
}

/// An established peer, as the policy rules and hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// RIB identifier of the peer.
    pub id: PeerId,
    /// Peer address.
    pub address: IpAddr,
    /// Peer AS.
    pub asn: u32,
    /// Peer BGP identifier.
    pub router_id: Ipv4Addr,
    /// eBGP session.
    pub ebgp: bool,
    /// Route reflector client.
    pub rr_client: bool,
    /// Always set ourselves as next hop.
    pub next_hop_self: bool,
    /// Our IPv4 address for next-hop-self.
    pub self_v4: Option<Ipv4Addr>,
    /// Our IPv6 address for next-hop-self.
    pub self_v6: Option<Ipv6Addr>,
}

/// Hooks of the embedding agent. Both default to accepting everything.
pub trait Policy: Send + Sync + 'static {
    /// Whether to accept `prefix` learned from `peer` into the Adj-RIB-In.
    fn import(&self, _peer: &PeerInfo, _prefix: &Prefix, _route: &RouteAttrs) -> bool {
        true
    }

    /// Whether to advertise the best path of `prefix` to `peer` (after the built-in rules).
    fn export(&self, _peer: &PeerInfo, _prefix: &Prefix, _route: &RouteAttrs) -> bool {
        true
    }
}

/// Accepts and advertises everything the BGP rules allow.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl Policy for AcceptAll {}

/// Built-in import checks of an UPDATE's attributes from `peer`: loop detection (AS_PATH,
/// ORIGINATOR_ID, CLUSTER_LIST) and attributes that must not come over eBGP.
pub fn check_import(attrs: &mut PathAttrs, peer: &PeerInfo, local: &Local) -> Result<(), TreatAsWithdraw> {
    if peer.ebgp {
        // RFC 7606 §7.5: LOCAL_PREF from an external peer is discarded; RFC 4456 attributes are
        // non-transitive and meaningless across ASes.
        attrs.local_pref = None;
        attrs.originator_id = None;
        attrs.cluster_list.clear();
        if let Some(p) = &attrs.as_path {
            if p.first_as() != Some(peer.asn) {
                return Err(TreatAsWithdraw::MalformedAttr { code: 2, reason: "first AS is not the peer's AS" });
            }
            if p.contains(local.asn) {
                return Err(TreatAsWithdraw::Loop("AS_PATH contains the local AS"));
            }
        }
    } else {
        if attrs.originator_id == Some(local.router_id) {
            return Err(TreatAsWithdraw::Loop("ORIGINATOR_ID is the local router ID"));
        }
        if let Some(c) = local.cluster_id
            && attrs.cluster_list.contains(&c)
        {
            return Err(TreatAsWithdraw::Loop("CLUSTER_LIST contains the local cluster ID"));
        }
    }
    Ok(())
}

/// Attributes for a locally originated route.
pub fn local_route(next_hop: Option<IpAddr>, family: Family) -> RouteAttrs {
    let unspecified = match family {
        Family::Ipv4Unicast => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::Ipv6Unicast => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    RouteAttrs {
        next_hop: next_hop.unwrap_or(unspecified),
        attrs: PathAttrs { origin: Some(Origin::Igp), as_path: Some(AsPath::default()), ..PathAttrs::default() },
    }
}

/// The attributes to advertise a best path to `to`, or `None` when the BGP rules forbid it:
/// no iBGP-to-iBGP re-advertisement unless reflecting (RFC 4456 §6), no advertisement back to
/// the source, no eBGP advertisement of a path containing the peer's AS.
///
/// `from` is the peer the path was learned from, `None` for local routes.
pub fn export(
    route: &RouteAttrs,
    family: Family,
    from: Option<&PeerInfo>,
    to: &PeerInfo,
    local: &Local,
) -> Option<RouteAttrs> {
    if let Some(f) = from {
        if f.id == to.id {
            return None;
        }
        if !f.ebgp && !to.ebgp {
            // iBGP to iBGP: only a route reflector passes routes on.
            local.cluster_id?;
            if !f.rr_client && !to.rr_client {
                return None;
            }
        }
    }
    let mut a = route.attrs.clone();
    let self_nh = match family {
        Family::Ipv4Unicast => to.self_v4.map(IpAddr::V4),
        Family::Ipv6Unicast => to.self_v6.map(IpAddr::V6),
    };
    let mut next_hop = route.next_hop;
    let reflected = matches!(from, Some(f) if !f.ebgp) && !to.ebgp;
    if to.ebgp {
        let path = a.as_path.take().unwrap_or_default();
        if path.contains(to.asn) {
            return None;
        }
        a.as_path = Some(path.prepend(local.asn));
        a.local_pref = None;
        a.originator_id = None;
        a.cluster_list.clear();
        // RFC 4271 §5.1.4: a MED received from another AS is not propagated.
        if from.is_some() {
            a.med = None;
        }
        next_hop = self_nh?;
    } else {
        if a.as_path.is_none() {
            a.as_path = Some(AsPath::default());
        }
        a.local_pref = Some(a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
        if reflected {
            if let Some(f) = from {
                a.originator_id.get_or_insert(f.router_id);
            }
            if let Some(c) = local.cluster_id {
                a.cluster_list.insert(0, c);
            }
        } else if from.is_none() || to.next_hop_self || next_hop.is_unspecified() {
            next_hop = self_nh?;
        }
    }
    if next_hop.is_unspecified() {
        next_hop = self_nh?;
    }
    // Unrecognized optional transitive attributes travel on with the Partial bit set.
    if from.is_some() {
        for u in &mut a.unknown {
            u.flags |= 0x20;
        }
    }
    a.next_hop = match next_hop {
        IpAddr::V4(v4) if family == Family::Ipv4Unicast => Some(v4),
        _ => None,
    };
    Some(RouteAttrs { next_hop, attrs: a })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: PeerId, ebgp: bool, rr_client: bool) -> PeerInfo {
        PeerInfo {
            id,
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)),
            asn: if ebgp { 65000 + id } else { 64512 },
            router_id: Ipv4Addr::new(1, 1, 1, id as u8),
            ebgp,
            rr_client,
            next_hop_self: false,
            self_v4: Some(Ipv4Addr::new(10, 0, 0, 100)),
            self_v6: None,
        }
    }

    fn local(rr: bool) -> Local {
        Local { asn: 64512, router_id: Ipv4Addr::new(9, 9, 9, 9), cluster_id: rr.then_some(Ipv4Addr::new(9, 9, 9, 9)) }
    }

    fn route() -> RouteAttrs {
        RouteAttrs {
            next_hop: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            attrs: PathAttrs {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::default()),
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
                med: Some(5),
                ..PathAttrs::default()
            },
        }
    }

    #[test]
    fn ibgp_full_mesh_does_not_readvertise() {
        let f = Family::Ipv4Unicast;
        assert!(export(&route(), f, Some(&peer(1, false, false)), &peer(2, false, false), &local(false)).is_none());
        // Back to the source: never.
        assert!(export(&route(), f, Some(&peer(1, false, false)), &peer(1, false, false), &local(false)).is_none());
    }

    #[test]
    fn reflection_rules_and_attributes() {
        let f = Family::Ipv4Unicast;
        let l = local(true);
        // Client to non-client and client: reflected with ORIGINATOR_ID and CLUSTER_LIST.
        let out = export(&route(), f, Some(&peer(1, false, true)), &peer(2, false, false), &l).unwrap();
        assert_eq!(out.attrs.originator_id, Some(Ipv4Addr::new(1, 1, 1, 1)));
        assert_eq!(out.attrs.cluster_list, vec![Ipv4Addr::new(9, 9, 9, 9)]);
        assert_eq!(out.next_hop, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(export(&route(), f, Some(&peer(1, false, true)), &peer(3, false, true), &l).is_some());
        // Non-client to non-client: not reflected; non-client to client: reflected.
        assert!(export(&route(), f, Some(&peer(1, false, false)), &peer(2, false, false), &l).is_none());
        assert!(export(&route(), f, Some(&peer(1, false, false)), &peer(2, false, true), &l).is_some());
    }

    #[test]
    fn ebgp_export_prepends_sets_next_hop_self_and_strips_ibgp_attributes() {
        let f = Family::Ipv4Unicast;
        let mut r = route();
        r.attrs.local_pref = Some(300);
        let out = export(&r, f, Some(&peer(1, false, false)), &peer(2, true, false), &local(false)).unwrap();
        assert_eq!(out.attrs.as_path, Some(AsPath::sequence(vec![64512])));
        assert_eq!(out.attrs.local_pref, None);
        assert_eq!(out.attrs.med, None);
        assert_eq!(out.attrs.next_hop, Some(Ipv4Addr::new(10, 0, 0, 100)));
        // A path through the peer's AS is not sent to it.
        let mut looped = route();
        looped.attrs.as_path = Some(AsPath::sequence(vec![65002]));
        assert!(export(&looped, f, Some(&peer(1, true, false)), &peer(2, true, false), &local(false)).is_none());
    }

    #[test]
    fn import_loop_checks() {
        let l = local(true);
        let mut a = route().attrs;
        a.originator_id = Some(l.router_id);
        assert!(check_import(&mut a, &peer(1, false, true), &l).is_err());
        let mut a = route().attrs;
        a.cluster_list = vec![Ipv4Addr::new(9, 9, 9, 9)];
        assert!(check_import(&mut a, &peer(1, false, true), &l).is_err());
        let mut a = route().attrs;
        a.as_path = Some(AsPath::sequence(vec![65001, 64512]));
        assert!(check_import(&mut a, &peer(1, true, false), &l).is_err());
        let mut a = route().attrs;
        a.as_path = Some(AsPath::sequence(vec![65001]));
        a.local_pref = Some(7);
        assert!(check_import(&mut a, &peer(1, true, false), &l).is_ok());
        assert_eq!(a.local_pref, None);
    }
}
