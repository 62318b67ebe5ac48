//! The BGP message model (RFC 4271 §4 and extensions), independent of the wire format.

use std::net::{IpAddr, Ipv4Addr};

use crate::types::{AS_TRANS, Family, Prefix};

/// One BGP message.
// UPDATE dominates the traffic; boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH (RFC 2918).
    RouteRefresh(RouteRefresh),
}

/// OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 2-octet "My Autonomous System" field (AS_TRANS for a 4-octet AS).
    pub my_as: u16,
    /// Proposed hold time in seconds (0 or at least 3).
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities (RFC 5492), in the order sent.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn`, filling the 2-octet field and the 4-octet AS capability.
    pub fn new(asn: u32, hold_time: u16, router_id: Ipv4Addr, mut caps: Vec<Capability>) -> Open {
        let my_as = u16::try_from(asn).unwrap_or(AS_TRANS);
        if !caps.iter().any(|c| matches!(c, Capability::FourOctetAs(_))) {
            caps.push(Capability::FourOctetAs(asn));
        }
        Open { my_as, hold_time, router_id, capabilities: caps }
    }

    /// The sender's AS: from the 4-octet AS capability when present.
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    /// The 4-octet AS capability value, if advertised.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
    }

    /// Families advertised with the multiprotocol capability (IPv4 unicast if none, RFC 4760 §8).
    pub fn families(&self) -> Vec<Family> {
        let mut out: Vec<Family> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol { afi, safi } => Family::from_afi_safi(*afi, *safi),
                _ => None,
            })
            .collect();
        if !self.capabilities.iter().any(|c| matches!(c, Capability::Multiprotocol { .. })) {
            out.push(Family::Ipv4Unicast);
        }
        out.sort();
        out.dedup();
        out
    }

    /// The graceful restart capability, if advertised.
    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }

    /// True if route refresh is advertised.
    pub fn route_refresh(&self) -> bool {
        self.capabilities.iter().any(|c| matches!(c, Capability::RouteRefresh))
    }
}

/// A capability of the OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions (code 1, RFC 4760).
    Multiprotocol {
        /// Address family identifier.
        afi: u16,
        /// Subsequent address family identifier.
        safi: u8,
    },
    /// Route refresh (code 2, RFC 2918).
    RouteRefresh,
    /// Graceful restart (code 64, RFC 4724).
    GracefulRestart(GracefulRestart),
    /// 4-octet AS numbers (code 65, RFC 6793).
    FourOctetAs(u32),
    /// ADD-PATH (code 69, RFC 7911): (afi, safi, send/receive bits).
    AddPath(Vec<(u16, u8, u8)>),
    /// Any other capability, kept verbatim.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

/// Graceful restart capability value (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GracefulRestart {
    /// Restart State (R) bit: the sender has restarted.
    pub restarting: bool,
    /// Graceful Notification (N) bit (RFC 8538).
    pub notification: bool,
    /// Restart time in seconds (12 bits).
    pub restart_time: u16,
    /// Per family: (afi, safi, forwarding state preserved).
    pub families: Vec<(u16, u8, bool)>,
}

/// ORIGIN attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Learned from an IGP.
    Igp = 0,
    /// Learned from EGP.
    Egp = 1,
    /// Learned some other way.
    Incomplete = 2,
}

/// Kind of an AS_PATH segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// AS_SET.
    Set = 1,
    /// AS_SEQUENCE.
    Sequence = 2,
    /// AS_CONFED_SEQUENCE (RFC 5065).
    ConfedSequence = 3,
    /// AS_CONFED_SET (RFC 5065).
    ConfedSet = 4,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Segment type.
    pub kind: SegmentKind,
    /// AS numbers (1..=255 of them).
    pub asns: Vec<u32>,
}

/// AS_PATH: a list of segments, held with 4-octet AS numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath(pub Vec<Segment>);

impl AsPath {
    /// A path made of one AS_SEQUENCE.
    pub fn sequence(asns: Vec<u32>) -> AsPath {
        if asns.is_empty() { AsPath(Vec::new()) } else { AsPath(vec![Segment { kind: SegmentKind::Sequence, asns }]) }
    }

    /// Path length for best path selection: an AS_SET counts 1, confederation segments 0.
    pub fn path_len(&self) -> usize {
        self.0
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                _ => 0,
            })
            .sum()
    }

    /// True if `asn` appears anywhere in the path.
    pub fn contains(&self, asn: u32) -> bool {
        self.0.iter().any(|s| s.asns.contains(&asn))
    }

    /// The first AS of the path (the neighbour AS) if it starts with a sequence.
    pub fn first_as(&self) -> Option<u32> {
        match self.0.first() {
            Some(s) if s.kind == SegmentKind::Sequence => s.asns.first().copied(),
            _ => None,
        }
    }

    /// A copy with `asn` prepended, as sent to an eBGP peer.
    pub fn prepend(&self, asn: u32) -> AsPath {
        let mut segs = self.0.clone();
        match segs.first_mut() {
            Some(s) if s.kind == SegmentKind::Sequence && s.asns.len() < 255 => s.asns.insert(0, asn),
            _ => segs.insert(0, Segment { kind: SegmentKind::Sequence, asns: vec![asn] }),
        }
        AsPath(segs)
    }
}

/// A path attribute the speaker does not interpret, passed on verbatim when optional transitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    /// Attribute flags (the extended-length bit is recomputed on encoding).
    pub flags: u8,
    /// Attribute type code.
    pub code: u8,
    /// Attribute value.
    pub value: Vec<u8>,
}

/// The path attributes of an UPDATE, except MP_REACH_NLRI and MP_UNREACH_NLRI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttrs {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH (with AS4_PATH merged in on 2-octet sessions).
    pub as_path: Option<AsPath>,
    /// NEXT_HOP (IPv4 NLRI only).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE.
    pub atomic_aggregate: bool,
    /// AGGREGATOR (AS, address), with AS4_AGGREGATOR merged in.
    pub aggregator: Option<(u32, Ipv4Addr)>,
    /// COMMUNITIES (RFC 1997).
    pub communities: Vec<u32>,
    /// ORIGINATOR_ID (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456).
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognized optional attributes (only transitive ones are propagated).
    pub unknown: Vec<RawAttr>,
}

/// MP_REACH_NLRI (RFC 4760) for a supported family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    /// Family of the NLRI.
    pub family: Family,
    /// Next hop; for IPv6 optionally followed by a link-local address.
    pub next_hop: IpAddr,
    /// IPv6 link-local next hop, when 32 octets were sent.
    pub link_local: Option<std::net::Ipv6Addr>,
    /// Reachable prefixes.
    pub nlri: Vec<Prefix>,
}

/// MP_UNREACH_NLRI (RFC 4760) for a supported family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    /// Family of the withdrawn prefixes.
    pub family: Family,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<Prefix>,
}

/// Why an UPDATE is handled as a withdrawal of all its prefixes (RFC 7606).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreatAsWithdraw {
    /// An attribute with wrong flags, length or value.
    #[error("malformed attribute {code}: {reason}")]
    MalformedAttr {
        /// Attribute type code.
        code: u8,
        /// Description.
        reason: &'static str,
    },
    /// A well-known mandatory attribute is missing.
    #[error("missing well-known attribute {0}")]
    Missing(u8),
    /// The attributes overrun the Total Path Attribute Length.
    #[error("path attributes overrun their length")]
    Overrun,
    /// A route with our own identifiers or AS (loop detection).
    #[error("loop detected: {0}")]
    Loop(&'static str),
}

/// UPDATE message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 unicast prefixes.
    pub withdrawn: Vec<Prefix>,
    /// Path attributes.
    pub attrs: PathAttrs,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// Reachable IPv4 unicast prefixes.
    pub nlri: Vec<Prefix>,
    /// Set by the decoder when RFC 7606 asks to treat the announced prefixes as withdrawn.
    pub treat_as_withdraw: Option<TreatAsWithdraw>,
}

impl Update {
    /// The End-of-RIB marker for `family` (RFC 4724 §2).
    pub fn end_of_rib(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            f => Update { mp_unreach: Some(MpUnreach { family: f, withdrawn: Vec::new() }), ..Update::default() },
        }
    }

    /// The family this UPDATE is an End-of-RIB marker for, if it is one.
    pub fn end_of_rib_family(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.mp_reach.is_some() {
            return None;
        }
        if self.attrs != PathAttrs::default() {
            return None;
        }
        match &self.mp_unreach {
            None => Some(Family::Ipv4Unicast),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            _ => None,
        }
    }

    /// All prefixes announced by this UPDATE.
    pub fn announced(&self) -> impl Iterator<Item = &Prefix> {
        self.nlri.iter().chain(self.mp_reach.iter().flat_map(|m| m.nlri.iter()))
    }

    /// All prefixes withdrawn by this UPDATE (not counting treat-as-withdraw).
    pub fn withdrawn_all(&self) -> impl Iterator<Item = &Prefix> {
        self.withdrawn.iter().chain(self.mp_unreach.iter().flat_map(|m| m.withdrawn.iter()))
    }
}

/// NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A notification without data.
    pub fn new(code: u8, subcode: u8) -> Notification {
        Notification { code, subcode, data: Vec::new() }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.code {
            1 => "message header error",
            2 => "OPEN message error",
            3 => "UPDATE message error",
            4 => "hold timer expired",
            5 => "finite state machine error",
            6 => "cease",
            7 => "ROUTE-REFRESH message error",
            _ => "unknown error",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)
    }
}

/// ROUTE-REFRESH message (RFC 2918, RFC 7313 subtypes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRefresh {
    /// AFI.
    pub afi: u16,
    /// Message subtype (0 = normal request).
    pub subtype: u8,
    /// SAFI.
    pub safi: u8,
}
