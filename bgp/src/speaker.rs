//! The speaker: a listener task, one session task per peer and one RIB task that owns the
//! routing tables, applies policy and sends UPDATEs; plus the handle the agent uses.
//!
//! Peers can be added, removed and changed while the speaker runs ([`Speaker::add_peer`],
//! [`Speaker::remove_peer`], [`Speaker::update_peer`]): only the affected peer's session starts
//! or ends; every other session and the RIB carry on untouched.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::best::Source;
use crate::codec::{self, Ctx};
use crate::config::{PeerConfig, SpeakerConfig};
use crate::hash::FastMap;
use crate::message::{GracefulRestart, Message, TreatAsWithdraw, Update};
use crate::policy::{self, Local, PeerInfo, Policy};
use crate::rib::{AdjRibOut, LOCAL, PeerId, Rib, RouteAttrs};
use crate::session::{RibMsg, Session, SessionInfo, StatusMap};
use crate::socket;
use crate::status::PeerStatus;
use crate::types::{Family, Prefix};

/// A change of the best path of a prefix, for the agent to program the kernel.
#[derive(Debug, Clone)]
pub struct RibEvent {
    /// The prefix.
    pub prefix: Prefix,
    /// New best path (source peer and attributes), `None` if the prefix is gone.
    pub best: Option<(PeerId, Arc<RouteAttrs>)>,
}

/// A route of the Loc-RIB as listed by [`Speaker::routes`].
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The prefix.
    pub prefix: Prefix,
    /// Source peer address (`None` for local routes).
    pub peer: Option<IpAddr>,
    /// Attributes.
    pub attrs: Arc<RouteAttrs>,
    /// Kept stale for a restarting peer.
    pub stale: bool,
}

enum Cmd {
    Originate(Prefix, Option<IpAddr>),
    Withdraw(Prefix),
    Routes(Family, oneshot::Sender<Vec<RouteEntry>>),
    Subscribe(mpsc::UnboundedSender<Vec<RibEvent>>),
}

/// Errors of the live peer operations.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A peer with this address is already configured.
    #[error("peer {0} already configured")]
    Exists(IpAddr),
    /// Setting the peer's MD5 key or TTL on the listening socket failed.
    #[error("listener socket options for peer {0}: {1}")]
    Socket(IpAddr, io::Error),
    /// The speaker's tasks have stopped.
    #[error("speaker stopped")]
    Stopped,
}

/// A running session: its ID, configuration, the sender the listener hands its connections to
/// (dropping it ends the session) and its task.
struct SessionHandle {
    id: PeerId,
    cfg: PeerConfig,
    incoming: mpsc::Sender<TcpStream>,
    task: JoinHandle<()>,
}

/// Peer address → where the listener sends a connection from it.
type Incoming = Arc<Mutex<HashMap<IpAddr, mpsc::Sender<TcpStream>>>>;

/// Handle to a running speaker. Dropping it stops all its tasks.
pub struct Speaker {
    cfg: Arc<SpeakerConfig>,
    cmd: mpsc::Sender<Cmd>,
    rib: mpsc::Sender<RibMsg>,
    status: StatusMap,
    counts: Arc<[AtomicUsize; 2]>,
    /// Listening sockets with the addresses they are bound to, in the order configured.
    listeners: Vec<(std::net::SocketAddr, Arc<TcpListener>)>,
    incoming: Incoming,
    /// Running sessions by peer address. Only the handle's (serialised) peer operations change it.
    sessions: tokio::sync::Mutex<BTreeMap<IpAddr, SessionHandle>>,
    /// IDs are never reused, so late messages of a removed session cannot touch its successor.
    next_id: AtomicU32,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for s in self.sessions.get_mut().values() {
            s.task.abort();
        }
    }
}

impl Speaker {
    /// Starts the speaker on the current tokio runtime.
    ///
    /// With `policy` the agent filters imports and exports; `restarting` sets the graceful
    /// restart R bit in the first OPEN to each peer.
    pub async fn start(cfg: SpeakerConfig, policy: Arc<dyn Policy>) -> io::Result<Speaker> {
        let cfg = Arc::new(cfg);
        let status: StatusMap = Arc::default();
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let (rib_tx, rib_rx) = mpsc::channel::<RibMsg>(256);
        let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(64);
        let mut tasks = Vec::new();
        let incoming: Incoming = Arc::default();
        let mut listeners = Vec::new();
        for addr in &cfg.listen {
            let l = Arc::new(socket::listen(*addr)?);
            listeners.push((l.local_addr()?, l.clone()));
            tasks.push(tokio::spawn(accept_loop(l, incoming.clone())));
        }
        let mut rib = Rib::new();
        rib.set_source(
            LOCAL,
            Source { local: true, ebgp: false, router_id: cfg.router_id, address: IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
        );
        let task = RibTask {
            local: Local { asn: cfg.asn, router_id: cfg.router_id, cluster_id: cfg.cluster_id },
            max_restart: cfg.graceful_restart.as_ref().map_or(120, |g| g.max_restart_time),
            peers: BTreeMap::new(),
            rib,
            policy,
            status: status.clone(),
            counts: counts.clone(),
            subs: Vec::new(),
        };
        tasks.push(tokio::spawn(task.run(rib_rx, cmd_rx)));
        let sp = Speaker {
            cfg: cfg.clone(),
            cmd: cmd_tx,
            rib: rib_tx,
            status,
            counts,
            listeners,
            incoming,
            sessions: tokio::sync::Mutex::new(BTreeMap::new()),
            next_id: AtomicU32::new(1),
            tasks,
        };
        let restarting = cfg.graceful_restart.as_ref().is_some_and(|g| g.restarting);
        for p in &cfg.peers {
            sp.spawn_peer(p.clone(), restarting).await.map_err(|e| match e {
                PeerError::Socket(_, e) => e,
                e => io::Error::other(e.to_string()),
            })?;
        }
        Ok(sp)
    }

    /// Adds a peer to the running speaker; no other session is touched. Its first OPEN does not
    /// carry the Restart State bit (this speaker did not restart for it).
    pub async fn add_peer(&self, cfg: PeerConfig) -> Result<(), PeerError> {
        self.spawn_peer(cfg, false).await
    }

    /// Removes a peer: its session ends (Cease/Peer De-configured if it was up) and its routes are
    /// withdrawn. False if no such peer was configured.
    pub async fn remove_peer(&self, address: IpAddr) -> bool {
        let mut sessions = self.sessions.lock().await;
        let Some(h) = sessions.remove(&address) else { return false };
        drop(sessions);
        self.retire(h).await;
        true
    }

    /// Replaces a peer's configuration. Only that session restarts, and only when something changed
    /// (password, timers, AS, ...); returns whether it did. A peer not yet configured is added.
    pub async fn update_peer(&self, cfg: PeerConfig) -> Result<bool, PeerError> {
        let mut sessions = self.sessions.lock().await;
        match sessions.get(&cfg.address) {
            Some(h) if h.cfg == cfg => return Ok(false),
            Some(_) => {
                // Invariant: the entry was just found under the same lock.
                let h = sessions.remove(&cfg.address).expect("session present");
                drop(sessions);
                self.retire(h).await;
            }
            None => drop(sessions),
        }
        self.spawn_peer(cfg, false).await?;
        Ok(true)
    }

    /// The configuration of every peer, by address.
    pub async fn peer_configs(&self) -> Vec<PeerConfig> {
        self.sessions.lock().await.values().map(|h| h.cfg.clone()).collect()
    }

    async fn spawn_peer(&self, cfg: PeerConfig, restarting: bool) -> Result<(), PeerError> {
        let mut sessions = self.sessions.lock().await;
        if sessions.contains_key(&cfg.address) {
            return Err(PeerError::Exists(cfg.address));
        }
        for l in self.listeners_for(cfg.address) {
            if cfg.password.is_some() {
                socket::set_md5(&**l, cfg.address, cfg.password.as_deref())
                    .map_err(|e| PeerError::Socket(cfg.address, e))?;
            }
            if cfg.ttl_security.is_some() {
                // GTSM peers check the TTL of our SYN-ACK too.
                socket::set_ttl_max(&**l, cfg.address.is_ipv6()).map_err(|e| PeerError::Socket(cfg.address, e))?;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut st) = self.status.lock() {
            st.insert(id, PeerStatus::new(cfg.address, cfg.asn));
        }
        // The RIB learns of the peer before its session can report anything (one ordered channel).
        self.rib.send(RibMsg::Add { peer: id, cfg: Box::new(cfg.clone()) }).await.map_err(|_| PeerError::Stopped)?;
        let (tx, rx) = mpsc::channel::<TcpStream>(4);
        if let Ok(mut inc) = self.incoming.lock() {
            inc.insert(cfg.address, tx.clone());
        }
        let s = Session {
            id,
            cfg: cfg.clone(),
            spk: self.cfg.clone(),
            status: self.status.clone(),
            rib: self.rib.clone(),
            incoming: rx,
            restarting,
        };
        let task = tokio::spawn(s.run());
        sessions.insert(cfg.address, SessionHandle { id, cfg, incoming: tx, task });
        Ok(())
    }

    /// Ends a removed peer's session and drops its state.
    async fn retire(&self, h: SessionHandle) {
        let SessionHandle { id, cfg, incoming, task } = h;
        if let Ok(mut inc) = self.incoming.lock() {
            inc.remove(&cfg.address);
        }
        // The session sees its connection channel close, says Cease/Peer De-configured if it was
        // up, and ends; wait a little for that NOTIFICATION, then make sure.
        drop(incoming);
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(3), task).await.is_err() {
            abort.abort();
        }
        if cfg.password.is_some() {
            for l in self.listeners_for(cfg.address) {
                let _ = socket::set_md5(&**l, cfg.address, None);
            }
        }
        if let Ok(mut st) = self.status.lock() {
            st.remove(&id);
        }
        let _ = self.rib.send(RibMsg::Remove { peer: id }).await;
    }

    /// The listening sockets a connection from `peer` can arrive on (those of its address family).
    fn listeners_for(&self, peer: IpAddr) -> impl Iterator<Item = &Arc<TcpListener>> {
        self.listeners.iter().filter(move |(a, _)| a.is_ipv6() == peer.is_ipv6()).map(|(_, l)| l)
    }

    /// Address the first listener is bound to.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listeners.first().map(|(a, _)| *a)
    }

    /// Addresses every listener is bound to, in the order configured.
    pub fn listen_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners.iter().map(|(a, _)| *a).collect()
    }

    /// State of every configured peer, in the order they were added.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.status.lock().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// Number of prefixes in the Loc-RIB of `family` (lock-free).
    pub fn loc_rib_len(&self, family: Family) -> usize {
        self.counts[family as usize].load(Ordering::Relaxed)
    }

    /// Originates `prefix` with next hop `next_hop` (`None`: our session address).
    pub async fn originate(&self, prefix: Prefix, next_hop: Option<IpAddr>) {
        let _ = self.cmd.send(Cmd::Originate(prefix, next_hop)).await;
    }

    /// Withdraws a locally originated prefix.
    pub async fn withdraw(&self, prefix: Prefix) {
        let _ = self.cmd.send(Cmd::Withdraw(prefix)).await;
    }

    /// The Loc-RIB of `family`.
    pub async fn routes(&self, family: Family) -> Vec<RouteEntry> {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Routes(family, tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Best paths as they change (the import hook for kernel programming). The first batch holds
    /// every best path the speaker already has (if any), so a subscriber never misses a route learned
    /// before it subscribed; every later batch holds changes.
    pub async fn subscribe(&self) -> mpsc::UnboundedReceiver<Vec<RibEvent>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.cmd.send(Cmd::Subscribe(tx)).await;
        rx
    }
}

async fn accept_loop(l: Arc<TcpListener>, incoming: Incoming) {
    loop {
        let (s, addr) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = incoming.lock().ok().and_then(|m| m.get(&addr.ip().to_canonical()).cloned());
        match tx {
            Some(tx) => {
                if tx.try_send(s).is_err() {
                    tracing::warn!(peer = %addr, "session busy, dropping connection");
                }
            }
            None => tracing::info!(peer = %addr, "connection from unknown peer refused"),
        }
    }
}

struct Up {
    info: PeerInfo,
    out: mpsc::UnboundedSender<Vec<u8>>,
    ctx: Ctx,
    families: Vec<Family>,
    adj_out: AdjRibOut,
}

struct Slot {
    cfg: PeerConfig,
    up: Option<Up>,
    last_info: Option<PeerInfo>,
    peer_gr: Option<GracefulRestart>,
    stale_until: Option<Instant>,
}

struct RibTask {
    local: Local,
    max_restart: u16,
    peers: BTreeMap<PeerId, Slot>,
    rib: Rib,
    policy: Arc<dyn Policy>,
    status: StatusMap,
    counts: Arc<[AtomicUsize; 2]>,
    subs: Vec<mpsc::UnboundedSender<Vec<RibEvent>>>,
}

impl RibTask {
    async fn run(mut self, mut rx: mpsc::Receiver<RibMsg>, mut cmd: mpsc::Receiver<Cmd>) {
        loop {
            let next_stale = self.peers.values().filter_map(|s| s.stale_until).min();
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.on_msg(m),
                    None => return,
                },
                c = cmd.recv() => match c {
                    Some(c) => self.on_cmd(c),
                    None => return,
                },
                _ = tokio::time::sleep_until(next_stale.unwrap_or_else(Instant::now)), if next_stale.is_some() => {
                    let now = Instant::now();
                    let expired: Vec<PeerId> =
                        self.peers.iter().filter(|(_, s)| s.stale_until.is_some_and(|t| t <= now)).map(|(id, _)| *id).collect();
                    for id in expired {
                        let Some(slot) = self.peers.get_mut(&id) else { continue };
                        slot.stale_until = None;
                        tracing::info!(peer = %slot.cfg.address, "restart timer expired, removing stale routes");
                        let mut changed = Vec::new();
                        for f in Family::ALL {
                            changed.extend(self.rib.sweep(id, f, true));
                        }
                        self.propagate(&changed);
                    }
                }
            }
        }
    }

    fn on_cmd(&mut self, c: Cmd) {
        match c {
            Cmd::Originate(p, nh) => {
                let ra = self.rib.intern(policy::local_route(nh, p.family()));
                if self.rib.announce(LOCAL, &p, ra) {
                    self.propagate(&[p]);
                }
            }
            Cmd::Withdraw(p) => {
                if self.rib.withdraw(LOCAL, &p) {
                    self.propagate(&[p]);
                }
            }
            Cmd::Routes(f, tx) => {
                let addr = |id: PeerId| self.peers.get(&id).map(|s| s.cfg.address);
                let v = self
                    .rib
                    .iter_best(f)
                    .map(|(prefix, p)| RouteEntry {
                        prefix,
                        peer: addr(p.peer),
                        attrs: p.attrs.clone(),
                        stale: p.stale,
                    })
                    .collect();
                let _ = tx.send(v);
            }
            Cmd::Subscribe(tx) => {
                // What was learned before this command arrived (sessions start with the speaker, so
                // that can be anything): the current best paths first, then each change. Done in
                // this task, so no change falls between the two.
                let now: Vec<RibEvent> = Family::ALL
                    .iter()
                    .flat_map(|f| self.rib.iter_best(*f))
                    .map(|(prefix, p)| RibEvent { prefix, best: Some((p.peer, p.attrs.clone())) })
                    .collect();
                if now.is_empty() || tx.send(now).is_ok() {
                    self.subs.push(tx);
                }
            }
        }
    }

    fn on_msg(&mut self, m: RibMsg) {
        match m {
            RibMsg::Up { peer, session, out } => self.on_up(peer, session, out),
            RibMsg::Update { peer, update } => self.on_update(peer, *update),
            RibMsg::Down { peer, graceful } => self.on_down(peer, graceful),
            RibMsg::Refresh { peer, family } => self.full_export(peer, family, false),
            RibMsg::Add { peer, cfg } => {
                self.peers
                    .insert(peer, Slot { cfg: *cfg, up: None, last_info: None, peer_gr: None, stale_until: None });
            }
            RibMsg::Remove { peer } => self.on_remove(peer),
        }
    }

    /// A de-configured peer: its routes go now (no graceful restart for a peer that is gone).
    fn on_remove(&mut self, peer: PeerId) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        let mut changed = Vec::new();
        for f in Family::ALL {
            changed.extend(self.rib.sweep(peer, f, false));
        }
        tracing::info!(peer, withdrawn = changed.len(), "peer removed");
        self.propagate(&changed);
    }

    fn on_up(&mut self, peer: PeerId, s: SessionInfo, out: mpsc::UnboundedSender<Vec<u8>>) {
        let Some(slot) = self.peers.get_mut(&peer) else { return };
        let asn = s.open.asn();
        let ebgp = asn != self.local.asn;
        let info = PeerInfo {
            id: peer,
            address: slot.cfg.address,
            asn,
            router_id: s.open.router_id,
            ebgp,
            rr_client: slot.cfg.rr_client && !ebgp && self.local.cluster_id.is_some(),
            next_hop_self: slot.cfg.next_hop_self,
            self_v4: match s.local.ip().to_canonical() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => slot.cfg.next_hop_v4,
            },
            self_v6: match s.local.ip().to_canonical() {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => slot.cfg.next_hop_v6,
            },
        };
        self.rib.set_source(peer, Source { local: false, ebgp, router_id: info.router_id, address: info.address });
        // Helper side of graceful restart: stale routes of families the peer no longer preserves
        // go now; the rest wait for End-of-RIB or the restart timer.
        let new_gr = s.open.graceful_restart().cloned();
        let mut changed = Vec::new();
        if slot.stale_until.is_some() {
            for f in Family::ALL {
                let (afi, safi) = f.afi_safi();
                let kept = new_gr
                    .as_ref()
                    .is_some_and(|g| g.families.iter().any(|(a, s, fwd)| *a == afi && *s == safi && *fwd));
                if !kept {
                    changed.extend(self.rib.sweep(peer, f, true));
                }
            }
        }
        slot.peer_gr = new_gr;
        slot.last_info = Some(info.clone());
        let families = s.families.clone();
        slot.up = Some(Up { info, out, ctx: s.ctx, families: families.clone(), adj_out: AdjRibOut::default() });
        tracing::info!(peer = %slot.cfg.address, asn, families = ?families, "established");
        self.propagate(&changed);
        for f in families {
            self.full_export(peer, f, true);
        }
    }

    fn on_down(&mut self, peer: PeerId, graceful: bool) {
        let max_restart = self.max_restart;
        let Some(slot) = self.peers.get_mut(&peer) else { return };
        slot.up = None;
        let mut changed = Vec::new();
        let gr = slot.peer_gr.clone().filter(|_| graceful);
        match gr {
            Some(g) => {
                let secs = g.restart_time.min(max_restart);
                for f in Family::ALL {
                    let (afi, safi) = f.afi_safi();
                    if g.families.iter().any(|(a, s, _)| *a == afi && *s == safi) && secs > 0 {
                        self.rib.mark_stale(peer, f);
                    } else {
                        changed.extend(self.rib.sweep(peer, f, false));
                    }
                }
                slot.stale_until = Some(Instant::now() + Duration::from_secs(secs.into()));
                tracing::info!(peer = %slot.cfg.address, secs, "peer down, keeping its routes as stale");
            }
            None => {
                slot.stale_until = None;
                for f in Family::ALL {
                    changed.extend(self.rib.sweep(peer, f, false));
                }
            }
        }
        self.propagate(&changed);
        self.publish_counts(&[peer]);
    }

    fn on_update(&mut self, peer: PeerId, mut u: Update) {
        let Some(slot) = self.peers.get_mut(&peer) else { return };
        let Some(up) = slot.up.as_ref() else { return };
        if let Some(f) = u.end_of_rib_family() {
            let changed = self.rib.sweep(peer, f, true);
            tracing::debug!(peer = %slot.cfg.address, family = %f, removed = changed.len(), "End-of-RIB");
            if self.peers.get(&peer).is_some_and(|s| s.stale_until.is_some()) {
                let any_stale = Family::ALL.iter().any(|f| self.rib.adj_in(peer, *f).iter().any(|(_, p)| p.stale));
                if !any_stale && let Some(s) = self.peers.get_mut(&peer) {
                    s.stale_until = None;
                }
            }
            self.propagate(&changed);
            self.publish_counts(&[peer]);
            return;
        }
        let info = up.info.clone();
        let families = up.families.clone();
        let mut changed: Vec<Prefix> = Vec::new();
        for p in u.withdrawn_all() {
            if self.rib.withdraw(peer, p) {
                changed.push(*p);
            }
        }
        let mut attrs = std::mem::take(&mut u.attrs);
        let verdict: Result<(), TreatAsWithdraw> = match u.treat_as_withdraw.take() {
            Some(t) => Err(t),
            None => policy::check_import(&mut attrs, &info, &self.local),
        };
        if let Err(why) = verdict {
            tracing::debug!(peer = %info.address, reason = %why, "treat-as-withdraw");
            for p in u.announced() {
                if self.rib.withdraw(peer, p) {
                    changed.push(*p);
                }
            }
        } else {
            let mut batches = Vec::new();
            if !u.nlri.is_empty()
                && let Some(nh) = attrs.next_hop
            {
                let mut a = attrs.clone();
                a.next_hop = None;
                batches.push((IpAddr::V4(nh), a, std::mem::take(&mut u.nlri)));
            }
            if let Some(m) = u.mp_reach.take() {
                let mut a = attrs;
                a.next_hop = None;
                batches.push((m.next_hop, a, m.nlri));
            }
            for (nh, a, prefixes) in batches {
                let ra = self.rib.intern(RouteAttrs { next_hop: nh, attrs: a });
                for p in prefixes {
                    let ok = families.contains(&p.family()) && self.policy.import(&info, &p, &ra);
                    let c = if ok { self.rib.announce(peer, &p, ra.clone()) } else { self.rib.withdraw(peer, &p) };
                    if c {
                        changed.push(p);
                    }
                }
            }
        }
        tracing::debug!(peer = %info.address, changed = changed.len(), "UPDATE received");
        self.propagate(&changed);
        self.publish_counts(&[peer]);
    }

    fn publish_counts(&self, peers: &[PeerId]) {
        self.counts[0].store(self.rib.len(Family::Ipv4Unicast), Ordering::Relaxed);
        self.counts[1].store(self.rib.len(Family::Ipv6Unicast), Ordering::Relaxed);
        if let Ok(mut st) = self.status.lock() {
            for p in peers {
                let Some(s) = st.get_mut(p) else { continue };
                s.prefixes_received = self.rib.count_from(*p);
                s.prefixes_advertised = self.peers.get(p).and_then(|x| x.up.as_ref()).map_or(0, |u| u.adj_out.len());
            }
        }
    }

    /// Sends changed best paths to every established peer and to subscribers.
    fn propagate(&mut self, changed: &[Prefix]) {
        if changed.is_empty() {
            return;
        }
        self.subs.retain(|s| !s.is_closed());
        if !self.subs.is_empty() {
            let ev: Vec<RibEvent> = changed.iter().map(|p| RibEvent { prefix: *p, best: self.rib.best(p) }).collect();
            for s in &self.subs {
                let _ = s.send(ev.clone());
            }
        }
        let ids: Vec<PeerId> = self.peers.iter().filter(|(_, s)| s.up.is_some()).map(|(id, _)| *id).collect();
        for id in &ids {
            self.export_to(*id, changed.iter().copied(), false);
        }
        self.publish_counts(&ids);
    }

    /// Advertises every best path of `family` to `peer` (session start, route refresh).
    fn full_export(&mut self, peer: PeerId, family: Family, end_of_rib: bool) {
        let prefixes: Vec<Prefix> = self.rib.iter_best(family).map(|(p, _)| p).collect();
        self.export_to(peer, prefixes.into_iter(), true);
        if end_of_rib && let Some(up) = self.peers.get(&peer).and_then(|s| s.up.as_ref()) {
            let mut buf = Vec::new();
            if codec::encode(&Message::Update(Update::end_of_rib(family)), &up.ctx, &mut buf).is_ok() {
                let _ = up.out.send(buf);
            }
        }
        self.publish_counts(&[peer]);
    }

    fn export_to(&mut self, to: PeerId, prefixes: impl Iterator<Item = Prefix>, force: bool) {
        let RibTask { local, peers, rib, policy, .. } = self;
        let Some(up) = peers.get(&to).and_then(|s| s.up.as_ref()) else { return };
        let to_info = up.info.clone();
        let families = up.families.clone();
        // Export results depend only on (attributes, source): compute each once per batch.
        let mut memo: FastMap<(usize, PeerId, Family), Option<Arc<RouteAttrs>>> = FastMap::default();
        let mut groups: FastMap<(usize, Family), (Arc<RouteAttrs>, Vec<Prefix>)> = FastMap::default();
        let mut withdrawals: Vec<Prefix> = Vec::new();
        let mut decided: Vec<(Prefix, Option<Arc<RouteAttrs>>)> = Vec::new();
        for p in prefixes {
            let f = p.family();
            if !families.contains(&f) {
                continue;
            }
            let out = rib.best(&p).and_then(|(from, ra)| {
                let key = (Arc::as_ptr(&ra) as usize, from, f);
                let exported = memo
                    .entry(key)
                    .or_insert_with(|| {
                        let from_info = peers.get(&from).and_then(|s| s.last_info.as_ref());
                        policy::export(&ra, f, from_info, &to_info, local).map(|a| rib.intern(a))
                    })
                    .clone();
                exported.filter(|a| policy.export(&to_info, &p, a))
            });
            decided.push((p, out));
        }
        let Some(up) = peers.get_mut(&to).and_then(|s| s.up.as_mut()) else { return };
        for (p, out) in decided {
            match out {
                Some(a) => {
                    if up.adj_out.advertise(p, a.clone()) || force {
                        groups
                            .entry((Arc::as_ptr(&a) as usize, p.family()))
                            .or_insert_with(|| (a, Vec::new()))
                            .1
                            .push(p);
                    }
                }
                None => {
                    if up.adj_out.withdraw(&p) {
                        withdrawals.push(p);
                    }
                }
            }
        }
        let mut buf = Vec::new();
        for f in Family::ALL {
            let w: Vec<Prefix> = withdrawals.iter().copied().filter(|p| p.family() == f).collect();
            if !w.is_empty()
                && let Err(e) = codec::encode_routes(None, f, &w, &up.ctx, &mut buf)
            {
                tracing::warn!(error = %e, "encoding withdrawals");
            }
        }
        for ((_, f), (a, ps)) in groups {
            if let Err(e) = codec::encode_routes(Some((&a.attrs, Some(a.next_hop))), f, &ps, &up.ctx, &mut buf) {
                tracing::warn!(error = %e, "encoding announcements");
            }
        }
        if !buf.is_empty() {
            tracing::debug!(peer = %to_info.address, withdrawn = withdrawals.len(), octets = buf.len(), "UPDATE sent");
            let _ = up.out.send(buf);
        }
    }
}
