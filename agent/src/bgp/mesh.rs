//! The running `tabby-bgp` speaker: started, changed peer by peer, or restarted (gracefully) as the plan
//! says; the prefixes it originates; and the best paths it learns, installed as `proto tabby` routes
//! through the route table (IPIP pools through `tunl0`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tabby_api::nodestatus::{BgpPeerStatus, BgpStatus, PeerType};
use tabby_bgp::{Family, GracefulRestartConfig, Prefix, Speaker, SpeakerConfig, State};
use tokio::task::JoinHandle;

use super::plan::{SpeakerPlan, peer_config, peer_diff, same_speaker};
use crate::routes::{RouteTable, Source, Target};

fn to_prefix(n: &IpNet) -> Option<Prefix> {
    Prefix::new(n.addr(), n.prefix_len())
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
    /// A mesh feeding `table`, whose speaker proposes `hold_time` (seconds; `TABBY_BGP_HOLD_TIME`).
    pub fn new(table: RouteTable, hold_time: u16) -> Mesh {
        Mesh {
            table,
            own_addrs: Vec::new(),
            speaker: None,
            plan: None,
            originated: BTreeSet::new(),
            sub: None,
            converging_since: None,
            hold_time,
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

    /// Brings the speaker to `plan` and the originated prefixes to `adverts`; returns how many prefixes
    /// and speaker changes that took, or why the speaker could not start.
    pub async fn apply(&mut self, plan: Option<SpeakerPlan>, adverts: &BTreeSet<IpNet>) -> Result<usize, String> {
        let mut changes = 0;
        if plan != self.plan {
            changes += 1;
            match (self.plan.clone(), &plan) {
                (Some(old), Some(new)) if self.speaker.is_some() && same_speaker(&old, new) => {
                    self.change_peers(&old, new).await;
                }
                _ => {
                    self.stop().await;
                    if let Some(p) = &plan
                        && let Err(e) = self.start(p).await
                    {
                        return Err(format!("starting the BGP speaker: {e}"));
                    }
                }
            }
            self.plan = plan;
        }
        let Some(sp) = self.speaker.clone() else { return Ok(changes) };
        for gone in self.originated.difference(adverts).cloned().collect::<Vec<_>>() {
            if let Some(p) = to_prefix(&gone) {
                sp.withdraw(p).await;
                if let Ok(mut o) = self.own.write() {
                    o.remove(&p);
                }
            }
            self.originated.remove(&gone);
            changes += 1;
        }
        for new in adverts.difference(&self.originated.clone()) {
            if let Some(p) = to_prefix(new) {
                if let Ok(mut o) = self.own.write() {
                    o.insert(p);
                }
                sp.originate(p, None).await;
            }
            self.originated.insert(*new);
            changes += 1;
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
        Ok(changes)
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
