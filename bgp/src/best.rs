//! Best path selection (RFC 4271 §9.1.2.2, RFC 4456 §9): a pure comparison.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};

use crate::message::PathAttrs;

/// Default LOCAL_PREF for paths that have none (eBGP-learned and local).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// The source of a path as best path selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Originated by this speaker.
    pub local: bool,
    /// Learned over eBGP.
    pub ebgp: bool,
    /// Peer BGP identifier.
    pub router_id: Ipv4Addr,
    /// Peer address.
    pub address: IpAddr,
}

/// A candidate path.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Attributes of the path.
    pub attrs: &'a PathAttrs,
    /// Where it came from.
    pub source: &'a Source,
    /// Stale (kept for a restarting peer).
    pub stale: bool,
}

/// Orders two candidates: `Less` means `a` is preferred over `b`.
pub fn compare(a: Candidate<'_>, b: Candidate<'_>) -> Ordering {
    let lp = |c: &Candidate<'_>| c.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
    let path_len = |c: &Candidate<'_>| c.attrs.as_path.as_ref().map_or(0, |p| p.path_len());
    let origin = |c: &Candidate<'_>| c.attrs.origin.map_or(2, |o| o as u8);
    let neighbor_as = |c: &Candidate<'_>| c.attrs.as_path.as_ref().and_then(|p| p.first_as());
    // RFC 4456 §9: the ORIGINATOR_ID stands in for the BGP identifier of reflected routes.
    let id = |c: &Candidate<'_>| u32::from(c.attrs.originator_id.unwrap_or(c.source.router_id));
    lp(&b)
        .cmp(&lp(&a))
        .then_with(|| b.source.local.cmp(&a.source.local))
        .then_with(|| path_len(&a).cmp(&path_len(&b)))
        .then_with(|| origin(&a).cmp(&origin(&b)))
        .then_with(|| {
            // MED is only comparable between paths from the same neighbouring AS.
            if neighbor_as(&a) == neighbor_as(&b) {
                a.attrs.med.unwrap_or(0).cmp(&b.attrs.med.unwrap_or(0))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| b.source.ebgp.cmp(&a.source.ebgp))
        // Fresh paths before stale ones of a restarting peer.
        .then_with(|| a.stale.cmp(&b.stale))
        .then_with(|| id(&a).cmp(&id(&b)))
        .then_with(|| a.attrs.cluster_list.len().cmp(&b.attrs.cluster_list.len()))
        .then_with(|| a.source.address.cmp(&b.source.address))
}

/// Index of the best candidate, or `None` if there are none.
pub fn select<'a>(cands: impl IntoIterator<Item = Candidate<'a>>) -> Option<usize> {
    let mut best: Option<(usize, Candidate<'a>)> = None;
    for (i, c) in cands.into_iter().enumerate() {
        match best {
            Some((_, b)) if compare(c, b) != Ordering::Less => {}
            _ => best = Some((i, c)),
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AsPath, Origin};

    fn src(ebgp: bool, id: u8) -> Source {
        Source {
            local: false,
            ebgp,
            router_id: Ipv4Addr::new(10, 0, 0, id),
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, id)),
        }
    }

    fn attrs(lp: Option<u32>, path: Vec<u32>, med: Option<u32>) -> PathAttrs {
        PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(path)),
            local_pref: lp,
            med,
            ..PathAttrs::default()
        }
    }

    fn cmp(a: (&PathAttrs, &Source), b: (&PathAttrs, &Source)) -> Ordering {
        compare(
            Candidate { attrs: a.0, source: a.1, stale: false },
            Candidate { attrs: b.0, source: b.1, stale: false },
        )
    }

    #[test]
    fn local_pref_then_as_path_then_origin() {
        let (s1, s2) = (src(false, 1), src(false, 2));
        assert_eq!(
            cmp((&attrs(Some(200), vec![1, 2, 3], None), &s1), (&attrs(Some(100), vec![1], None), &s2)),
            Ordering::Less
        );
        assert_eq!(cmp((&attrs(None, vec![1, 2], None), &s1), (&attrs(None, vec![1], None), &s2)), Ordering::Greater);
        let mut inc = attrs(None, vec![1], None);
        inc.origin = Some(Origin::Incomplete);
        assert_eq!(cmp((&inc, &s1), (&attrs(None, vec![1], None), &s2)), Ordering::Greater);
    }

    #[test]
    fn med_only_within_same_neighbor_as_and_ebgp_over_ibgp() {
        let (e, i) = (src(true, 9), src(false, 1));
        // Same neighbour AS: lower MED wins even against eBGP.
        assert_eq!(cmp((&attrs(None, vec![7], Some(5)), &i), (&attrs(None, vec![7], Some(10)), &e)), Ordering::Less);
        // Different neighbour AS: MED ignored, eBGP preferred.
        assert_eq!(cmp((&attrs(None, vec![7], Some(5)), &i), (&attrs(None, vec![8], Some(10)), &e)), Ordering::Greater);
    }

    #[test]
    fn router_id_originator_id_and_cluster_list_tiebreaks() {
        let (s1, s2) = (src(false, 1), src(false, 2));
        let a = attrs(None, vec![7], None);
        assert_eq!(cmp((&a, &s1), (&a, &s2)), Ordering::Less);
        let mut reflected = a.clone();
        reflected.originator_id = Some(Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(cmp((&reflected, &s1), (&a, &s2)), Ordering::Greater);
        let mut longer = a.clone();
        longer.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1)];
        assert_eq!(cmp((&longer, &s1), (&a, &s1)), Ordering::Greater);
        assert_eq!(
            select([
                Candidate { attrs: &longer, source: &s1, stale: false },
                Candidate { attrs: &a, source: &s1, stale: false }
            ]),
            Some(1)
        );
    }
}
