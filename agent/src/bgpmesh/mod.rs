//! BGP with the `tabby-bgp` speaker: who this node peers with ([`plan`]: the node-to-node mesh, BGPPeers,
//! route reflectors), what it advertises ([`advertisements`]: own blocks as aggregates, borrowed /32s,
//! service CIDRs), and the glue ([`Mesh`]) that runs the speaker, originates and withdraws prefixes and
//! installs the best paths it learns as `proto tabby` routes.
//!
//! A change of the peer set is applied to the running speaker peer by peer ([`peer_diff`]): a new Node
//! adds one session, a deleted one removes one, a changed BGPPeer (password, timers) restarts only its
//! session; every other session stays Established. Only a change of the speaker itself (AS number,
//! router ID, IPv6 address, listen port, cluster ID, mesh restart time) restarts it, with the graceful-restart
//! Restart State bit set: peers keep our routes (and the kernel keeps theirs) while the new sessions
//! come up, so no traffic is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, SecretKeySelector};
use tabby_api::bgp::{BGPConfigurationSpec, BGPPeer, NextHopMode};
use tabby_api::ipam::block::{ATTR_NODE, addr_at, attribute_at};
use tabby_api::ipam::{IPAMBlock, IPPool};
use tabby_api::nodestatus::{BgpPeerStatus, BgpStatus, PeerType};
use tabby_api::selector::Selector;
use tabby_bgp::{Family, GracefulRestartConfig, PeerConfig, Prefix, Speaker, SpeakerConfig, State};
use tokio::task::JoinHandle;

use crate::node::{self, RR_CLUSTER_ID};
use crate::routes::{RouteTable, Source, Target};

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
    node::node_meta(n, ANNOTATION_ASN).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rr_cluster(n: &Node) -> Option<Ipv4Addr> {
    node::node_meta(n, RR_CLUSTER_ID).and_then(|v| v.parse().ok())
}

fn v4(n: &Node) -> Option<Ipv4Addr> {
    match node::node_address(n, false)?.addr() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn v6(n: &Node) -> Option<Ipv6Addr> {
    match node::node_address(n, true)?.addr() {
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
pub fn plan(
    me: &str,
    nodes: &[Node],
    cfg: &BGPConfigurationSpec,
    peers: &[BGPPeer],
    secret: &dyn Fn(&SecretKeySelector) -> Option<String>,
) -> Option<SpeakerPlan> {
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
    for bp in peers {
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
fn same_speaker(a: &SpeakerPlan, b: &SpeakerPlan) -> bool {
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

fn to_prefix(n: &IpNet) -> Option<Prefix> {
    Prefix::new(n.addr(), n.prefix_len())
}

/// What `me` advertises: its blocks (aggregates; never the /32s inside them), addresses it borrowed
/// from other nodes' blocks (/32, /128), and the service CIDRs of the BGPConfiguration.
pub fn advertisements(me: &str, blocks: &[IPAMBlock], pools: &[IPPool], cfg: &BGPConfigurationSpec) -> BTreeSet<IpNet> {
    let host = format!("host:{me}");
    let exportable = |cidr: &IpNet| {
        !pools
            .iter()
            .any(|p| p.spec.disable_bgp_export && p.spec.cidr.parse::<IpNet>().is_ok_and(|pc| pc.contains(cidr)))
    };
    let mut out = BTreeSet::new();
    for b in blocks.iter().filter(|b| !b.spec.deleted) {
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

fn peer_config(p: &PlannedPeer) -> PeerConfig {
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

/// Export policy: routers outside the cluster get only the prefixes this node originates (its blocks,
/// borrowed addresses, services), so each block is reached through its own node, never through a
/// node that learned it; nodes (mesh, reflector) get what the BGP rules allow.
struct ExportPolicy {
    /// Peers outside the cluster (follows the live peer set).
    external: Arc<std::sync::RwLock<std::collections::HashSet<IpAddr>>>,
    /// What this node originates (updated before each originate, after each withdraw).
    own: Arc<std::sync::RwLock<std::collections::HashSet<Prefix>>>,
}

impl tabby_bgp::Policy for ExportPolicy {
    fn export(&self, peer: &tabby_bgp::PeerInfo, prefix: &Prefix, _route: &tabby_bgp::RouteAttrs) -> bool {
        let external = self.external.read().map_or(true, |e| e.contains(&peer.address));
        !external || self.own.read().is_ok_and(|o| o.contains(prefix))
    }
}

/// Hold time the agent proposes (seconds); `TABBY_BGP_HOLD_TIME` overrides the default 90 (tests use a
/// short one to see a lost node withdrawn quickly).
pub fn hold_time_from_env() -> u16 {
    std::env::var("TABBY_BGP_HOLD_TIME").ok().and_then(|v| v.parse().ok()).filter(|v| *v == 0 || *v >= 3).unwrap_or(90)
}

/// The running speaker and what it originates.
pub struct Mesh {
    table: RouteTable,
    /// This node's session addresses: a learned route with one of them as next hop is our own.
    own_addrs: Vec<IpAddr>,
    speaker: Option<Arc<Speaker>>,
    plan: Option<SpeakerPlan>,
    originated: BTreeSet<IpNet>,
    sub: Option<JoinHandle<()>>,
    /// When the current speaker started; `None` once its routes replaced the previous ones.
    converging_since: Option<Instant>,
    hold_time: u16,
    restarted: bool,
    /// The running speaker replaced another one in this process.
    restarted_speaker: bool,
    own: Arc<std::sync::RwLock<std::collections::HashSet<Prefix>>>,
    external: Arc<std::sync::RwLock<std::collections::HashSet<IpAddr>>>,
    /// How learned routes become kernel routes (IPIP pools go through tunl0).
    encap: crate::encap::ipip::Shared,
}

impl Mesh {
    pub fn new(table: RouteTable) -> Mesh {
        Mesh {
            table,
            own_addrs: Vec::new(),
            speaker: None,
            plan: None,
            originated: BTreeSet::new(),
            sub: None,
            converging_since: None,
            hold_time: hold_time_from_env(),
            restarted: false,
            restarted_speaker: false,
            own: Arc::default(),
            external: Arc::default(),
            encap: crate::encap::ipip::Shared::default(),
        }
    }

    /// Sets the encapsulation rules of learned routes; when they change, what the speaker learned is
    /// installed again under the new rules (a restarted speaker still converging does that itself when
    /// it replaces its predecessor's routes).
    pub async fn set_encap(&mut self, e: crate::encap::ipip::Encap) {
        if !self.encap.replace(e) || (self.converging_since.is_some() && self.restarted_speaker) {
            return;
        }
        let Some(sp) = self.speaker.clone() else { return };
        let snap = self.learned_table(&sp).await;
        self.table.set(Source::Remote, snap);
    }

    /// Every best path the speaker learned, as kernel routes.
    async fn learned_table(&self, sp: &Speaker) -> HashMap<IpNet, Target> {
        let mut snap = HashMap::new();
        for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            for r in sp.routes(f).await {
                if let Some((dst, t)) = self.learned(r.prefix, r.peer.is_some().then_some(r.attrs.next_hop)) {
                    snap.insert(dst, t);
                }
            }
        }
        snap
    }

    /// Brings the speaker to `plan` and the originated prefixes to `adverts`.
    pub async fn apply(&mut self, plan: Option<SpeakerPlan>, adverts: &BTreeSet<IpNet>) {
        let started = Instant::now();
        if plan != self.plan {
            match (self.plan.clone(), &plan) {
                (Some(old), Some(new)) if self.speaker.is_some() && same_speaker(&old, new) => {
                    self.change_peers(&old, new).await;
                }
                _ => {
                    self.stop().await;
                    if let Some(p) = &plan
                        && let Err(e) = self.start(p).await
                    {
                        tracing::warn!(error = %e, "starting the BGP speaker");
                        crate::metrics::reconcile_done("bgp", started.elapsed(), false);
                        return;
                    }
                }
            }
            self.plan = plan;
        }
        let Some(sp) = self.speaker.clone() else { return };
        for gone in self.originated.difference(adverts).cloned().collect::<Vec<_>>() {
            if let Some(p) = to_prefix(&gone) {
                sp.withdraw(p).await;
                if let Ok(mut o) = self.own.write() {
                    o.remove(&p);
                }
            }
            self.originated.remove(&gone);
        }
        for new in adverts.difference(&self.originated.clone()) {
            if let Some(p) = to_prefix(new) {
                if let Ok(mut o) = self.own.write() {
                    o.insert(p);
                }
                sp.originate(p, None).await;
            }
            self.originated.insert(*new);
        }
        // Once every session is up again (or the restart time passed), what the new speaker learned
        // replaces what the previous one installed.
        if let Some(since) = self.converging_since {
            let peers = sp.peers();
            let all_up = peers.iter().all(|p| p.state == State::Established);
            let max = self.plan.as_ref().map_or(120, |p| p.max_restart_time);
            if (all_up && since.elapsed() > Duration::from_secs(2)) || since.elapsed() > Duration::from_secs(max.into())
            {
                // The first speaker of this process fed an empty remote table from its first event on, so
                // the table already is what it learned; a later one replaces what its predecessor left.
                if self.restarted_speaker {
                    let snap = self.learned_table(&sp).await;
                    self.table.set(Source::Remote, snap);
                }
                self.table.hold_remote(None);
                self.converging_since = None;
                tracing::info!(routes = self.table.counts().remote, "BGP converged");
            }
        }
        crate::metrics::reconcile_done("bgp", started.elapsed(), true);
    }

    fn learned(&self, prefix: Prefix, next_hop: Option<IpAddr>) -> Option<(IpNet, Target)> {
        let nh = next_hop?;
        if self.own_addrs.contains(&nh) || nh.is_unspecified() {
            return None;
        }
        let dst = IpNet::new(prefix.addr(), prefix.len()).ok()?;
        Some((dst, self.encap.read().route(dst, nh)))
    }

    /// Applies a new peer set to the running speaker: only added, removed and changed peers' sessions
    /// are touched.
    async fn change_peers(&mut self, old: &SpeakerPlan, new: &SpeakerPlan) {
        let Some(sp) = self.speaker.clone() else { return };
        let d = peer_diff(&old.peers, &new.peers);
        let externals = |plan: &SpeakerPlan| -> std::collections::HashSet<IpAddr> {
            plan.peers.iter().filter(|p| p.external).map(|p| p.address).collect()
        };
        // While sessions change, a peer that is external in either plan only gets our own prefixes.
        if let Ok(mut e) = self.external.write() {
            *e = externals(old).union(&externals(new)).copied().collect();
        }
        // Concurrently: each ending session may wait (up to 3 s) for its Cease NOTIFICATION to go out.
        futures::future::join_all(d.remove.iter().map(|a| sp.remove_peer(*a))).await;
        let changed = futures::future::join_all(d.change.iter().map(|p| sp.update_peer(peer_config(p)))).await;
        let mut restarted = 0;
        for (p, r) in d.change.iter().zip(changed) {
            match r {
                Ok(true) => restarted += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(peer = %p.address, error = %e, "changing a BGP peer"),
            }
        }
        for p in &d.add {
            if let Err(e) = sp.add_peer(peer_config(p)).await {
                tracing::warn!(peer = %p.address, error = %e, "adding a BGP peer");
            }
        }
        if let Ok(mut e) = self.external.write() {
            *e = externals(new);
        }
        tracing::info!(added = d.add.len(), removed = d.remove.len(), restarted, "BGP peers changed live");
    }

    async fn start(&mut self, p: &SpeakerPlan) -> std::io::Result<()> {
        let mut cfg = SpeakerConfig::new(p.router_id, p.asn);
        cfg.listen = vec![std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p.listen_port)];
        if p.ipv6.is_some() {
            // IPv6 node sessions and IPv6 BGPPeers connect here.
            cfg.listen.push(std::net::SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), p.listen_port));
        }
        cfg.cluster_id = p.cluster_id;
        cfg.hold_time = self.hold_time;
        cfg.connect_retry = Duration::from_secs(2);
        cfg.graceful_restart = Some(GracefulRestartConfig {
            restart_time: p.max_restart_time,
            // Every start is a restart for peers that still hold our routes.
            restarting: true,
            max_restart_time: p.max_restart_time,
        });
        cfg.peers = p.peers.iter().map(peer_config).collect();
        if let Ok(mut e) = self.external.write() {
            *e = p.peers.iter().filter(|x| x.external).map(|x| x.address).collect();
        }
        // The previous listener may take a moment to close.
        let mut attempt = 0;
        let sp = loop {
            let policy = ExportPolicy { external: self.external.clone(), own: self.own.clone() };
            match Speaker::start(cfg.clone(), Arc::new(policy)).await {
                Ok(s) => break s,
                Err(e) if attempt < 20 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let sp = Arc::new(sp);
        self.own_addrs = std::iter::once(IpAddr::V4(p.router_id)).chain(p.ipv6.map(IpAddr::V6)).collect();
        let mut rx = sp.subscribe().await;
        let table = self.table.clone();
        let own = self.own_addrs.clone();
        let encap = self.encap.clone();
        self.sub = Some(tokio::spawn(async move {
            while let Some(events) = rx.recv().await {
                // Held until the update is applied, so a rule change cannot slip in between.
                let e = encap.read();
                let changes = events.into_iter().filter_map(|ev| {
                    let dst = IpNet::new(ev.prefix.addr(), ev.prefix.len()).ok()?;
                    let t = ev.best.and_then(|(peer, attrs)| {
                        let nh = attrs.next_hop;
                        (peer != 0 && !own.contains(&nh) && !nh.is_unspecified()).then(|| e.route(dst, nh))
                    });
                    Some((dst, t))
                });
                table.update(Source::Remote, changes);
                drop(e);
            }
        }));
        self.speaker = Some(sp);
        self.originated.clear();
        if let Ok(mut o) = self.own.write() {
            o.clear();
        }
        self.converging_since = Some(Instant::now());
        self.restarted_speaker = self.restarted;
        if self.restarted {
            tracing::info!(
                peers = p.peers.len(),
                "BGP speaker restarted for a new AS, router ID, IPv6 address, port or cluster ID"
            );
        }
        self.restarted = true;
        Ok(())
    }

    /// Stops the speaker (sessions close without NOTIFICATION: peers keep our routes for the restart time).
    pub async fn stop(&mut self) {
        if let Some(s) = self.sub.take() {
            s.abort();
        }
        self.speaker = None;
        self.originated.clear();
        if let Ok(mut o) = self.own.write() {
            o.clear();
        }
    }

    /// Peer states for NodeStatus.
    pub fn status(&self) -> Option<BgpStatus> {
        let sp = self.speaker.as_ref()?;
        let plan = self.plan.as_ref()?;
        let kinds: HashMap<IpAddr, PeerType> = plan.peers.iter().map(|p| (p.address, p.kind)).collect();
        let mut st = BgpStatus::default();
        for p in sp.peers() {
            let established = p.state == State::Established;
            if established {
                st.peers_established += 1;
            }
            let s = BgpPeerStatus {
                peer_ip: p.address.to_string(),
                type_: kinds.get(&p.address).copied().unwrap_or_default(),
                state: if established { "Established".into() } else { p.state.to_string() },
                since: Some(tabby_api::nodestatus::timestamp(p.since)),
                info: if established {
                    Some(format!("{} received, {} advertised", p.prefixes_received, p.prefixes_advertised))
                } else {
                    p.last_error.clone()
                },
            };
            if p.address.is_ipv6() { st.peers_v6.push(s) } else { st.peers_v4.push(s) }
        }
        Some(st)
    }

    /// True when BGP is off, or every configured session is established.
    pub fn ready(&self) -> bool {
        self.speaker.as_ref().is_none_or(|s| s.peers().iter().all(|p| p.state == State::Established))
    }

    pub fn peer_count(&self) -> usize {
        self.plan.as_ref().map_or(0, |p| p.peers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_api::bgp::BGPPeerSpec;

    fn node(name: &str, addr: &str, extra: &[(&str, &str)]) -> Node {
        let mut ann: BTreeMap<String, String> = [(node::ANNOTATION_V4.to_string(), format!("{addr}/24"))].into();
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

    fn no_secret(_: &SecretKeySelector) -> Option<String> {
        None
    }

    #[test]
    fn full_mesh_greater_address_listens() {
        let nodes = vec![node("a", "192.168.1.1", &[]), node("b", "192.168.1.2", &[]), node("c", "192.168.1.3", &[])];
        let cfg = BGPConfigurationSpec::default();
        let p = plan("b", &nodes, &cfg, &[], &no_secret).unwrap();
        assert_eq!(p.asn, 64512);
        assert_eq!(p.router_id, "192.168.1.2".parse::<Ipv4Addr>().unwrap());
        let got: Vec<(String, bool, PeerType)> =
            p.peers.iter().map(|p| (p.address.to_string(), p.passive, p.kind)).collect();
        assert_eq!(
            got,
            vec![("192.168.1.1".into(), true, PeerType::NodeMesh), ("192.168.1.3".into(), false, PeerType::NodeMesh)]
        );
        let off = BGPConfigurationSpec { node_to_node_mesh_enabled: false, ..Default::default() };
        assert!(plan("b", &nodes, &off, &[], &no_secret).unwrap().peers.is_empty());
        assert!(plan("zz", &nodes, &cfg, &[], &no_secret).is_none());
        // No IPv6 address on this node: no IPv6 routes go out.
        assert!(p.peers.iter().all(|p| p.next_hop_v6.is_none()));
    }

    #[test]
    fn dual_stack_nodes_peer_over_ipv4_and_ipv6_each_family_in_its_own_session() {
        let v6 = |a: &'static str| (node::ANNOTATION_V6, a);
        let nodes = vec![
            node("a", "192.168.1.1", &[v6("fd50::9/64")]),
            node("b", "192.168.1.2", &[v6("fd50::2/64")]),
            node("c", "192.168.1.3", &[]),
        ];
        let p = plan("a", &nodes, &BGPConfigurationSpec::default(), &[], &no_secret).unwrap();
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
        let b = plan("b", &nodes, &BGPConfigurationSpec::default(), &[], &no_secret).unwrap();
        let to_a: Vec<_> = b
            .peers
            .iter()
            .filter(|x| ["192.168.1.1", "fd50::9"].contains(&x.address.to_string().as_str()))
            .map(|x| (x.address.to_string(), x.passive, x.families.clone()))
            .collect();
        assert_eq!(to_a, vec![("192.168.1.1".into(), true, vec![V4]), ("fd50::9".into(), false, vec![V6])]);
        // c has no IPv6 address: one session with a, carrying both families, no IPv6 next hop of its own.
        let c = plan("c", &nodes, &BGPConfigurationSpec::default(), &[], &no_secret).unwrap();
        assert!(c.ipv6.is_none());
        assert!(c.peers.iter().all(|x| x.families == vec![V4, V6] && x.next_hop_v6.is_none() && x.address.is_ipv4()));
    }

    #[test]
    fn a_node_with_only_an_ipv6_address_gets_an_ipv6_session() {
        let mut only6 = node("b", "192.168.1.2", &[(node::ANNOTATION_V6, "fd50::2/64")]);
        only6.metadata.annotations.as_mut().unwrap().remove(node::ANNOTATION_V4);
        let nodes = vec![node("a", "192.168.1.1", &[(node::ANNOTATION_V6, "fd50::1/64")]), only6];
        let p = plan("a", &nodes, &BGPConfigurationSpec::default(), &[], &no_secret).unwrap();
        let got: Vec<_> = p.peers.iter().map(|x| (x.address.to_string(), x.families.clone())).collect();
        assert_eq!(got, vec![("fd50::2".to_string(), vec![Family::Ipv6Unicast])]);
    }

    #[test]
    fn gaining_an_ipv6_address_restarts_the_speaker_to_listen_on_ipv6() {
        let single = vec![node("a", "192.168.1.1", &[]), node("b", "192.168.1.2", &[])];
        let dual =
            vec![node("a", "192.168.1.1", &[(node::ANNOTATION_V6, "fd50::1/64")]), node("b", "192.168.1.2", &[])];
        let cfg = BGPConfigurationSpec::default();
        let (old, new) =
            (plan("a", &single, &cfg, &[], &no_secret).unwrap(), plan("a", &dual, &cfg, &[], &no_secret).unwrap());
        assert!(!same_speaker(&old, &new));
    }

    #[test]
    fn mesh_restart_time_and_live_peer_diff() {
        let nodes = vec![node("a", "192.168.1.1", &[]), node("b", "192.168.1.2", &[]), node("c", "192.168.1.3", &[])];
        let cfg = BGPConfigurationSpec { node_mesh_max_restart_time: Some("2m".into()), ..Default::default() };
        let p = plan("a", &nodes, &cfg, &[], &no_secret).unwrap();
        assert_eq!(p.max_restart_time, 120);
        assert!(p.peers.iter().all(|x| x.restart_time == Some(120) && x.keepalive_time.is_none()));
        let short = BGPConfigurationSpec { node_mesh_max_restart_time: Some("30s".into()), ..Default::default() };
        assert!(plan("a", &nodes, &short, &[], &no_secret).unwrap().peers.iter().all(|x| x.restart_time == Some(30)));
        let unset = plan("a", &nodes, &BGPConfigurationSpec::default(), &[], &no_secret).unwrap();
        assert!(unset.peers.iter().all(|x| x.restart_time.is_none()));

        // A fourth node adds one peer and changes nothing else; a new mesh password changes every one.
        let mut four = nodes.clone();
        four.push(node("d", "192.168.1.4", &[]));
        let p4 = plan("a", &four, &cfg, &[], &no_secret).unwrap();
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
        let d = peer_diff(&p.peers, &plan("a", &nodes, &pw, &[], &secret).unwrap().peers);
        assert_eq!((d.add.len(), d.remove.len(), d.change.len()), (0, 0, 2));
        // A new AS number is a new speaker.
        let asn = BGPConfigurationSpec { as_number: 65000, ..cfg };
        assert!(!same_speaker(&p, &plan("a", &nodes, &asn, &[], &no_secret).unwrap()));
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
        let a = plan("a", &nodes, &mesh, &[], &no_secret).unwrap();
        assert_eq!(a.peers.len(), 1);
        assert_eq!(a.peers[0].address.to_string(), "192.168.1.2");
    }

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
        let got: Vec<String> = advertisements("a", &[mine, theirs], &[], &cfg).iter().map(|n| n.to_string()).collect();
        assert_eq!(got, vec!["10.0.0.0/26", "10.0.0.67/32", "10.96.0.0/16"]);
    }
}
