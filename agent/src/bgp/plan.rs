//! Who this node peers with: the node-to-node mesh, BGPPeers (by node, node selector, peer IP or peer
//! selector, in both directions), route reflectors and their clients, dual-stack sessions — a pure
//! function of the Nodes, BGPConfiguration, BGPPeers and Secrets ([`plan`]), and the live difference
//! between two peer sets ([`peer_diff`]).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{Node, SecretKeySelector};
use tabby_api::bgp::{BGPConfigurationSpec, BGPPeer, NextHopMode};
use tabby_api::nodestatus::PeerType;
use tabby_api::selector::Selector;
use tabby_bgp::{Family, PeerConfig};

use crate::facts;

/// Node label or annotation: this node is a route reflector with this cluster ID.
pub const RR_CLUSTER_ID: &str = "tabby.dev/route-reflector-cluster-id";
/// Node annotation overriding the cluster AS number for one node.
pub const ANNOTATION_ASN: &str = "tabby.dev/as-number";

/// One peer the speaker should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
    pub passive: bool,
    pub password: Option<String>,
    pub rr_client: bool,
    pub hold_time: Option<u16>,
    /// Seconds between KEEPALIVEs (BGPPeer `keepaliveTime`).
    pub keepalive_time: Option<u16>,
    /// Graceful-restart time this peer is given for us (BGPPeer `maxRestartTime`, or for the mesh
    /// BGPConfiguration `nodeMeshMaxRestartTime`).
    pub restart_time: Option<u16>,
    pub next_hop_self: bool,
    pub ttl_security: Option<u8>,
    pub kind: PeerType,
    /// A router outside the cluster (BGPPeer peerIP): it gets only what this node originates.
    pub external: bool,
    /// Address families the session carries.
    pub families: Vec<Family>,
    /// Address outgoing connections start from (this node's IPv6 address for IPv6 node sessions).
    pub local_address: Option<IpAddr>,
    /// This node's IPv6 address as the next hop of IPv6 routes sent in an IPv4 session (RFC 4760), for
    /// a peer node that publishes no IPv6 address of its own; `None` sends none.
    pub next_hop_v6: Option<Ipv6Addr>,
}

/// The speaker this node should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerPlan {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub listen_port: u16,
    pub cluster_id: Option<Ipv4Addr>,
    pub max_restart_time: u16,
    /// This node's IPv6 address: the speaker then listens on IPv6 too.
    pub ipv6: Option<Ipv6Addr>,
    pub peers: Vec<PlannedPeer>,
}

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

fn name(n: &Node) -> &str {
    n.metadata.name.as_deref().unwrap_or("")
}

fn sel_matches(sel: &Option<String>, n: &Node) -> Option<bool> {
    let s = sel.as_deref()?;
    Some(Selector::parse(s).map(|s| s.matches(&labels(n))).unwrap_or(false))
}

/// Whether `peer` applies to node `n` (node, nodeSelector, or neither: every node).
fn applies_to(peer: &BGPPeer, n: &Node) -> bool {
    match (&peer.spec.node, &peer.spec.node_selector) {
        (Some(x), _) => x == name(n),
        (None, Some(_)) => sel_matches(&peer.spec.node_selector, n).unwrap_or(false),
        (None, None) => true,
    }
}

fn node_asn(n: &Node, default: u32) -> u32 {
    facts::node_meta(n, ANNOTATION_ASN).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rr_cluster(n: &Node) -> Option<Ipv4Addr> {
    facts::node_meta(n, RR_CLUSTER_ID).and_then(|v| v.parse().ok())
}

fn v4(n: &Node) -> Option<Ipv4Addr> {
    match facts::node_address(n, false)?.addr() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn v6(n: &Node) -> Option<Ipv6Addr> {
    match facts::node_address(n, true)?.addr() {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// A Go-style duration as seconds for a BGP timer (at most 65535).
fn timer_secs(s: &Option<String>) -> Option<u16> {
    s.as_deref().and_then(tabby_api::duration::parse_secs).map(|v| v.min(u64::from(u16::MAX)) as u16)
}

fn parse_peer_ip(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let sa: std::net::SocketAddr = s.parse().ok()?;
    Some((sa.ip(), Some(sa.port())))
}

/// The speaker `me` should run, or `None` when it has no IPv4 address yet.
pub fn plan<N: Borrow<Node>, P: Borrow<BGPPeer>>(
    me: &str,
    nodes: &[N],
    cfg: &BGPConfigurationSpec,
    peers: &[P],
    secret: &dyn Fn(&SecretKeySelector) -> Option<String>,
) -> Option<SpeakerPlan> {
    let nodes: Vec<&Node> = nodes.iter().map(Borrow::borrow).collect();
    let my = nodes.iter().find(|n| name(n) == me)?;
    let my_addr = v4(my)?;
    let my_v6 = v6(my);
    let asn = node_asn(my, cfg.as_number);
    let cluster_id = rr_cluster(my);
    let mesh_restart = timer_secs(&cfg.node_mesh_max_restart_time);
    let max_restart = mesh_restart.unwrap_or(120);
    let mesh_password = cfg.node_mesh_password.as_ref().and_then(|p| secret(&p.secret_key_ref));
    let mut out: BTreeMap<IpAddr, PlannedPeer> = BTreeMap::new();
    // The sessions with another node, as Calico has them: between the IPv4 addresses for IPv4 routes and,
    // when both nodes publish one, between the IPv6 addresses for IPv6 routes. With only one side dual
    // stack, IPv6 routes ride the IPv4 session (MP-BGP) with this node's IPv6 address as next hop.
    let node_peers = |other: &Node, kind: PeerType, password: Option<String>, t: Timers, nhs: bool| {
        let other_asn = node_asn(other, cfg.as_number);
        let rr_client = cluster_id.is_some() && rr_cluster(other).is_none() && other_asn == asn;
        let session = |address: IpAddr, passive: bool, families: Vec<Family>| PlannedPeer {
            address,
            asn: other_asn,
            port: cfg.listen_port,
            passive,
            password: password.clone(),
            rr_client,
            hold_time: None,
            keepalive_time: t.keepalive,
            restart_time: t.restart,
            next_hop_self: nhs,
            ttl_security: None,
            kind: if rr_client { PeerType::RouteReflectorClient } else { kind },
            external: false,
            families,
            local_address: None,
            next_hop_v6: None,
        };
        let mut out = Vec::new();
        // The side with the greater address listens; the other connects.
        match (v4(other), my_v6.zip(v6(other))) {
            (v4_other, Some((mine, theirs))) => {
                if let Some(a) = v4_other {
                    out.push(session(IpAddr::V4(a), my_addr > a, vec![Family::Ipv4Unicast]));
                }
                out.push(PlannedPeer {
                    local_address: Some(IpAddr::V6(mine)),
                    ..session(IpAddr::V6(theirs), mine > theirs, vec![Family::Ipv6Unicast])
                });
            }
            (Some(a), None) => out.push(PlannedPeer {
                next_hop_v6: my_v6,
                ..session(IpAddr::V4(a), my_addr > a, vec![Family::Ipv4Unicast, Family::Ipv6Unicast])
            }),
            (None, None) => {}
        }
        out
    };
    // Full mesh: every other node, except that route reflectors leave it.
    if cfg.node_to_node_mesh_enabled && cluster_id.is_none() {
        for n in nodes.iter().filter(|n| name(n) != me && rr_cluster(n).is_none()) {
            let t = Timers { keepalive: None, restart: mesh_restart };
            for p in node_peers(n, PeerType::NodeMesh, mesh_password.clone(), t, false) {
                out.insert(p.address, p);
            }
        }
    }
    for bp in peers.iter().map(Borrow::borrow) {
        let s = &bp.spec;
        let kind =
            if s.node.is_some() || s.node_selector.is_some() { PeerType::NodePeer } else { PeerType::GlobalPeer };
        let password = s.password.as_ref().and_then(|p| secret(&p.secret_key_ref));
        let timers = Timers { keepalive: timer_secs(&s.keepalive_time), restart: timer_secs(&s.max_restart_time) };
        let nhs = s.next_hop_mode == Some(NextHopMode::SelfHop);
        if applies_to(bp, my) {
            if let Some(ip) = &s.peer_ip {
                if let Some((addr, port)) = parse_peer_ip(ip)
                    && addr != IpAddr::V4(my_addr)
                    && Some(addr) != my_v6.map(IpAddr::V6)
                {
                    let peer_asn = s.as_number.unwrap_or(asn);
                    out.insert(
                        addr,
                        PlannedPeer {
                            address: addr,
                            asn: peer_asn,
                            port: port.unwrap_or(179),
                            passive: false,
                            password: password.clone(),
                            rr_client: cluster_id.is_some() && peer_asn == asn,
                            hold_time: None,
                            keepalive_time: timers.keepalive,
                            restart_time: timers.restart,
                            next_hop_self: nhs,
                            ttl_security: s.ttl_security,
                            kind: if cluster_id.is_some() && peer_asn == asn {
                                PeerType::RouteReflectorClient
                            } else {
                                kind
                            },
                            external: true,
                            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
                            local_address: None,
                            next_hop_v6: my_v6,
                        },
                    );
                }
            } else {
                for n in nodes.iter().filter(|n| name(n) != me && sel_matches(&s.peer_selector, n) == Some(true)) {
                    for p in node_peers(n, kind, password.clone(), timers, nhs) {
                        out.insert(p.address, p);
                    }
                }
            }
        }
        // The reverse direction: nodes this BGPPeer makes peer with us.
        if s.peer_ip.is_none() && sel_matches(&s.peer_selector, my) == Some(true) {
            for n in nodes.iter().filter(|n| name(n) != me && applies_to(bp, n)) {
                for p in node_peers(n, kind, password.clone(), timers, nhs) {
                    out.entry(p.address).or_insert(p);
                }
            }
        }
    }
    Some(SpeakerPlan {
        asn,
        router_id: my_addr,
        listen_port: cfg.listen_port,
        cluster_id,
        max_restart_time: max_restart,
        ipv6: my_v6,
        peers: out.into_values().collect(),
    })
}

/// Per-peer BGP timers from the API.
#[derive(Debug, Clone, Copy)]
struct Timers {
    keepalive: Option<u16>,
    restart: Option<u16>,
}

/// Whether two plans describe the same speaker, so that only their peers differ.
pub fn same_speaker(a: &SpeakerPlan, b: &SpeakerPlan) -> bool {
    (a.asn, a.router_id, a.listen_port, a.cluster_id, a.max_restart_time, a.ipv6)
        == (b.asn, b.router_id, b.listen_port, b.cluster_id, b.max_restart_time, b.ipv6)
}

/// How to get from one peer set to another without touching the peers that did not change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    pub add: Vec<PlannedPeer>,
    pub remove: Vec<IpAddr>,
    /// Same address, different settings: that session alone is restarted (if its speaker
    /// configuration differs; a new peer type alone restarts nothing).
    pub change: Vec<PlannedPeer>,
}

/// The peers to add, remove and change to turn `old` into `new` (pure).
pub fn peer_diff(old: &[PlannedPeer], new: &[PlannedPeer]) -> PeerDiff {
    let was: HashMap<IpAddr, &PlannedPeer> = old.iter().map(|p| (p.address, p)).collect();
    let now: HashMap<IpAddr, &PlannedPeer> = new.iter().map(|p| (p.address, p)).collect();
    let mut d = PeerDiff::default();
    for p in new {
        match was.get(&p.address) {
            None => d.add.push(p.clone()),
            Some(o) if *o != p => d.change.push(p.clone()),
            Some(_) => {}
        }
    }
    d.remove = old.iter().filter(|p| !now.contains_key(&p.address)).map(|p| p.address).collect();
    d
}

pub fn peer_config(p: &PlannedPeer) -> PeerConfig {
    let mut c = PeerConfig::new(p.address, p.asn);
    c.port = p.port;
    c.passive = p.passive;
    c.password = p.password.clone();
    c.rr_client = p.rr_client;
    c.hold_time = p.hold_time;
    c.keepalive_time = p.keepalive_time;
    c.restart_time = p.restart_time;
    c.next_hop_self = p.next_hop_self;
    c.ttl_security = p.ttl_security;
    c.families = p.families.clone();
    c.local_address = p.local_address;
    c.next_hop_v6 = p.next_hop_v6;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ANNOTATION_V4, ANNOTATION_V6};
    use tabby_api::bgp::BGPPeerSpec;

    fn node(name: &str, addr: &str, extra: &[(&str, &str)]) -> Node {
        let mut ann: BTreeMap<String, String> = [(ANNOTATION_V4.to_string(), format!("{addr}/24"))].into();
        let mut labels = BTreeMap::new();
        for (k, v) in extra {
            if k.contains("label:") {
                labels.insert(k.trim_start_matches("label:").to_string(), v.to_string());
            } else {
                ann.insert(k.to_string(), v.to_string());
            }
        }
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.annotations = Some(ann);
        n.metadata.labels = Some(labels);
        n
    }

    const NO_PEERS: &[BGPPeer] = &[];

    fn no_secret(_: &SecretKeySelector) -> Option<String> {
        None
    }

    #[test]
    fn full_mesh_greater_address_listens() {
        let nodes = vec![node("a", "192.168.1.1", &[]), node("b", "192.168.1.2", &[]), node("c", "192.168.1.3", &[])];
        let cfg = BGPConfigurationSpec::default();
        let p = plan("b", &nodes, &cfg, NO_PEERS, &no_secret).unwrap();
        assert_eq!(p.asn, 64512);
        assert_eq!(p.router_id, "192.168.1.2".parse::<Ipv4Addr>().unwrap());
        let got: Vec<(String, bool, PeerType)> =
            p.peers.iter().map(|p| (p.address.to_string(), p.passive, p.kind)).collect();
        assert_eq!(
            got,
            vec![("192.168.1.1".into(), true, PeerType::NodeMesh), ("192.168.1.3".into(), false, PeerType::NodeMesh)]
        );
        let off = BGPConfigurationSpec { node_to_node_mesh_enabled: false, ..Default::default() };
        assert!(plan("b", &nodes, &off, NO_PEERS, &no_secret).unwrap().peers.is_empty());
        assert!(plan("zz", &nodes, &cfg, NO_PEERS, &no_secret).is_none());
        // No IPv6 address on this node: no IPv6 routes go out.
        assert!(p.peers.iter().all(|p| p.next_hop_v6.is_none()));
    }

    #[test]
    fn dual_stack_nodes_peer_over_ipv4_and_ipv6_each_family_in_its_own_session() {
        let v6 = |a: &'static str| (ANNOTATION_V6, a);
        let nodes = vec![
            node("a", "192.168.1.1", &[v6("fd50::9/64")]),
            node("b", "192.168.1.2", &[v6("fd50::2/64")]),
            node("c", "192.168.1.3", &[]),
        ];
        let p = plan("a", &nodes, &BGPConfigurationSpec::default(), NO_PEERS, &no_secret).unwrap();
        assert_eq!(p.ipv6, Some("fd50::9".parse().unwrap()));
        let got: Vec<(String, bool, Vec<Family>, Option<String>)> = p
            .peers
            .iter()
            .map(|x| (x.address.to_string(), x.passive, x.families.clone(), x.next_hop_v6.map(|a| a.to_string())))
            .collect();
        use Family::{Ipv4Unicast as V4, Ipv6Unicast as V6};
        assert_eq!(
            got,
            vec![
                // b publishes an IPv6 address: IPv4 routes between the IPv4 addresses...
                ("192.168.1.2".into(), false, vec![V4], None),
                // ...c does not: its session carries both, ours with our IPv6 address as next hop.
                ("192.168.1.3".into(), false, vec![V4, V6], Some("fd50::9".into())),
                // ...and IPv6 routes between the IPv6 addresses, where fd50::9 > fd50::2 listens.
                ("fd50::2".into(), true, vec![V6], None),
            ]
        );
        let c6 = peer_config(&p.peers[2]);
        assert_eq!((c6.families, c6.local_address), (vec![V6], Some("fd50::9".parse().unwrap())));
        // b's view of the same pair is the mirror image, so both sides negotiate the same families.
        let b = plan("b", &nodes, &BGPConfigurationSpec::default(), NO_PEERS, &no_secret).unwrap();
        let to_a: Vec<_> = b
            .peers
            .iter()
            .filter(|x| ["192.168.1.1", "fd50::9"].contains(&x.address.to_string().as_str()))
            .map(|x| (x.address.to_string(), x.passive, x.families.clone()))
            .collect();
        assert_eq!(to_a, vec![("192.168.1.1".into(), true, vec![V4]), ("fd50::9".into(), false, vec![V6])]);
        // c has no IPv6 address: one session with a, carrying both families, no IPv6 next hop of its own.
        let c = plan("c", &nodes, &BGPConfigurationSpec::default(), NO_PEERS, &no_secret).unwrap();
        assert!(c.ipv6.is_none());
        assert!(c.peers.iter().all(|x| x.families == vec![V4, V6] && x.next_hop_v6.is_none() && x.address.is_ipv4()));
    }

    #[test]
    fn a_node_with_only_an_ipv6_address_gets_an_ipv6_session() {
        let mut only6 = node("b", "192.168.1.2", &[(ANNOTATION_V6, "fd50::2/64")]);
        only6.metadata.annotations.as_mut().unwrap().remove(ANNOTATION_V4);
        let nodes = vec![node("a", "192.168.1.1", &[(ANNOTATION_V6, "fd50::1/64")]), only6];
        let p = plan("a", &nodes, &BGPConfigurationSpec::default(), NO_PEERS, &no_secret).unwrap();
        let got: Vec<_> = p.peers.iter().map(|x| (x.address.to_string(), x.families.clone())).collect();
        assert_eq!(got, vec![("fd50::2".to_string(), vec![Family::Ipv6Unicast])]);
    }

    #[test]
    fn gaining_an_ipv6_address_restarts_the_speaker_to_listen_on_ipv6() {
        let single = vec![node("a", "192.168.1.1", &[]), node("b", "192.168.1.2", &[])];
        let dual = vec![node("a", "192.168.1.1", &[(ANNOTATION_V6, "fd50::1/64")]), node("b", "192.168.1.2", &[])];
        let cfg = BGPConfigurationSpec::default();
        let (old, new) = (
            plan("a", &single, &cfg, NO_PEERS, &no_secret).unwrap(),
            plan("a", &dual, &cfg, NO_PEERS, &no_secret).unwrap(),
        );
        assert!(!same_speaker(&old, &new));
    }

    #[test]
    fn mesh_restart_time_and_live_peer_diff() {
        let nodes = vec![node("a", "192.168.1.1", &[]), node("b", "192.168.1.2", &[]), node("c", "192.168.1.3", &[])];
        let cfg = BGPConfigurationSpec { node_mesh_max_restart_time: Some("2m".into()), ..Default::default() };
        let p = plan("a", &nodes, &cfg, NO_PEERS, &no_secret).unwrap();
        assert_eq!(p.max_restart_time, 120);
        assert!(p.peers.iter().all(|x| x.restart_time == Some(120) && x.keepalive_time.is_none()));
        let short = BGPConfigurationSpec { node_mesh_max_restart_time: Some("30s".into()), ..Default::default() };
        assert!(
            plan("a", &nodes, &short, NO_PEERS, &no_secret).unwrap().peers.iter().all(|x| x.restart_time == Some(30))
        );
        let unset = plan("a", &nodes, &BGPConfigurationSpec::default(), NO_PEERS, &no_secret).unwrap();
        assert!(unset.peers.iter().all(|x| x.restart_time.is_none()));

        // A fourth node adds one peer and changes nothing else; a new mesh password changes every one.
        let mut four = nodes.clone();
        four.push(node("d", "192.168.1.4", &[]));
        let p4 = plan("a", &four, &cfg, NO_PEERS, &no_secret).unwrap();
        assert!(same_speaker(&p, &p4));
        let d = peer_diff(&p.peers, &p4.peers);
        assert_eq!(d.add.iter().map(|x| x.address.to_string()).collect::<Vec<_>>(), vec!["192.168.1.4"]);
        assert!(d.remove.is_empty() && d.change.is_empty());
        let back = peer_diff(&p4.peers, &p.peers);
        assert_eq!(back.remove, vec!["192.168.1.4".parse::<IpAddr>().unwrap()]);
        assert!(peer_diff(&p.peers, &p.peers).add.is_empty());
        let pw = BGPConfigurationSpec {
            node_mesh_password: Some(tabby_api::bgp::BgpPassword {
                secret_key_ref: SecretKeySelector { name: "s".into(), key: "k".into(), optional: None },
            }),
            ..cfg.clone()
        };
        let secret = |_: &SecretKeySelector| Some("pw".to_string());
        let d = peer_diff(&p.peers, &plan("a", &nodes, &pw, NO_PEERS, &secret).unwrap().peers);
        assert_eq!((d.add.len(), d.remove.len(), d.change.len()), (0, 0, 2));
        // A new AS number is a new speaker.
        let asn = BGPConfigurationSpec { as_number: 65000, ..cfg };
        assert!(!same_speaker(&p, &plan("a", &nodes, &asn, NO_PEERS, &no_secret).unwrap()));
    }

    #[test]
    fn global_peer_with_password_and_node_specific_peer() {
        let nodes = vec![node("a", "192.168.1.1", &[("label:rack", "r1")]), node("b", "192.168.1.2", &[])];
        let mut g = BGPPeer::new("router", BGPPeerSpec::default());
        g.spec.peer_ip = Some("192.168.1.254".into());
        g.spec.as_number = Some(65000);
        g.spec.password = Some(tabby_api::bgp::BgpPassword {
            secret_key_ref: SecretKeySelector { name: "s".into(), key: "k".into(), optional: None },
        });
        g.spec.keepalive_time = Some("10s".into());
        g.spec.max_restart_time = Some("45s".into());
        let mut ns = BGPPeer::new("rack", BGPPeerSpec::default());
        ns.spec.node_selector = Some("rack == 'r1'".into());
        ns.spec.peer_ip = Some("10.9.9.9:1790".into());
        ns.spec.as_number = Some(65001);
        let secret = |s: &SecretKeySelector| (s.name == "s" && s.key == "k").then(|| "pw".to_string());
        let cfg = BGPConfigurationSpec { node_to_node_mesh_enabled: false, ..Default::default() };
        let pa = plan("a", &nodes, &cfg, &[g.clone(), ns.clone()], &secret).unwrap();
        assert_eq!(pa.peers.len(), 2);
        let r = pa.peers.iter().find(|p| p.asn == 65000).unwrap();
        assert_eq!((r.password.as_deref(), r.keepalive_time, r.kind), (Some("pw"), Some(10), PeerType::GlobalPeer));
        assert_eq!((r.hold_time, r.restart_time), (None, Some(45)));
        let c = peer_config(r);
        assert_eq!((c.keepalive_time, c.restart_time, c.hold_time), (Some(10), Some(45), None));
        let n = pa.peers.iter().find(|p| p.asn == 65001).unwrap();
        assert_eq!((n.port, n.kind), (1790, PeerType::NodePeer));
        let pb = plan("b", &nodes, &cfg, &[g, ns], &secret).unwrap();
        assert_eq!(pb.peers.len(), 1);
    }

    #[test]
    fn route_reflector_leaves_the_mesh_and_serves_clients() {
        let nodes = vec![
            node("rr", "192.168.1.10", &[(RR_CLUSTER_ID, "224.0.0.1"), ("label:rr", "true")]),
            node("a", "192.168.1.1", &[]),
            node("b", "192.168.1.2", &[]),
        ];
        let mut bp = BGPPeer::new("to-rr", BGPPeerSpec::default());
        bp.spec.node_selector = Some("all()".into());
        bp.spec.peer_selector = Some("has(rr)".into());
        let cfg = BGPConfigurationSpec { node_to_node_mesh_enabled: false, ..Default::default() };
        let rr = plan("rr", &nodes, &cfg, std::slice::from_ref(&bp), &no_secret).unwrap();
        assert_eq!(rr.cluster_id, Some("224.0.0.1".parse().unwrap()));
        assert_eq!(rr.peers.len(), 2);
        assert!(rr.peers.iter().all(|p| p.rr_client && p.kind == PeerType::RouteReflectorClient));
        let a = plan("a", &nodes, &cfg, &[bp], &no_secret).unwrap();
        assert_eq!(a.peers.len(), 1);
        assert_eq!(a.peers[0].address.to_string(), "192.168.1.10");
        assert!(!a.peers[0].rr_client);
        // With the mesh on, the reflector still stays out of it.
        let mesh = BGPConfigurationSpec::default();
        let a = plan("a", &nodes, &mesh, NO_PEERS, &no_secret).unwrap();
        assert_eq!(a.peers.len(), 1);
        assert_eq!(a.peers[0].address.to_string(), "192.168.1.2");
    }
}
