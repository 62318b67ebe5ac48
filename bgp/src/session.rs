//! One BGP session per peer: the RFC 4271 §8 state machine on a single tokio task, with hold,
//! keepalive and connect-retry timers and connection collision detection (§6.8).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout};

use crate::codec::{self, Ctx, DecodeError, code};
use crate::config::{PeerConfig, SpeakerConfig};
use crate::message::{Capability, GracefulRestart, Message, Notification, Open, Update};
use crate::rib::PeerId;
use crate::socket::{self, SockOpts};
use crate::status::{PeerStatus, State};
use crate::types::{Family, SAFI_UNICAST};

/// Hold time used in OpenSent (RFC 4271 §8.2.2 suggests 4 minutes).
const LARGE_HOLD: Duration = Duration::from_secs(240);
/// Bytes of pending output above which the session stops taking more from the RIB.
const OUT_HIGH_WATER: usize = 1 << 20;
/// Cease subcode "Peer De-configured" (RFC 4486), sent when the peer is removed from the speaker.
const CEASE_DECONFIGURED: u8 = 3;

/// Per-peer status shared by the sessions, the RIB task and the handle, keyed by peer ID.
pub(crate) type StatusMap = Arc<Mutex<BTreeMap<PeerId, PeerStatus>>>;

/// What a session tells the RIB task.
#[derive(Debug)]
pub(crate) enum RibMsg {
    /// Session Established.
    Up { peer: PeerId, session: SessionInfo, out: mpsc::UnboundedSender<Vec<u8>> },
    /// An UPDATE arrived.
    Update { peer: PeerId, update: Box<Update> },
    /// Session left Established; `graceful`: ended without NOTIFICATION (RFC 4724 applies).
    Down { peer: PeerId, graceful: bool },
    /// ROUTE-REFRESH for a family.
    Refresh { peer: PeerId, family: Family },
    /// A peer was configured (sent by the handle before its session starts).
    Add { peer: PeerId, cfg: Box<PeerConfig> },
    /// A peer was de-configured: drop its routes and state.
    Remove { peer: PeerId },
}

/// What was negotiated for an Established session.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub open: Open,
    pub local: SocketAddr,
    pub ctx: Ctx,
    pub families: Vec<Family>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessErr {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("sent NOTIFICATION {0}")]
    Sent(Notification),
    #[error("received NOTIFICATION {0}")]
    Received(Notification),
    #[error("peer restarted (new connection while Established)")]
    PeerRestart(TcpStream),
}

impl SessErr {
    /// Whether RFC 4724 keeps the peer's routes: the session ended without a NOTIFICATION.
    fn graceful(&self) -> bool {
        matches!(self, SessErr::Io(_) | SessErr::Closed | SessErr::PeerRestart(_))
    }
}

struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    ctx: Ctx,
}

impl Reader {
    /// Reads one message. Cancel-safe: bytes are only consumed once a message is complete.
    async fn next(&mut self) -> Result<Result<Message, DecodeError>, SessErr> {
        loop {
            match codec::decode(&self.buf[self.start..], &self.ctx) {
                Ok(Some((m, n))) => {
                    self.start += n;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(Ok(m));
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(65536);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(SessErr::Closed);
            }
        }
    }
}

struct Conn {
    r: Reader,
    w: OwnedWriteHalf,
    outbound: bool,
    local: SocketAddr,
}

impl Conn {
    fn new(s: TcpStream, outbound: bool) -> io::Result<Conn> {
        let local = s.local_addr()?;
        s.set_nodelay(true)?;
        let (rd, w) = s.into_split();
        Ok(Conn {
            r: Reader { rd, buf: Vec::with_capacity(65536), start: 0, ctx: Ctx { four_octet_as: false } },
            w,
            outbound,
            local,
        })
    }

    async fn send(&mut self, m: &Message) -> Result<(), SessErr> {
        let bytes = codec::to_bytes(m, &self.r.ctx).map_err(|e| io::Error::other(e.to_string()))?;
        self.w.write_all(&bytes).await?;
        Ok(())
    }

    /// Sends a NOTIFICATION (best effort, bounded in time) and returns the error to end with.
    async fn notify(&mut self, n: Notification) -> SessErr {
        let _ = timeout(Duration::from_secs(2), self.send(&Message::Notification(n.clone()))).await;
        let _ = timeout(Duration::from_secs(1), self.w.shutdown()).await;
        SessErr::Sent(n)
    }
}

/// One peer's session task.
pub(crate) struct Session {
    pub id: PeerId,
    pub cfg: PeerConfig,
    pub spk: Arc<SpeakerConfig>,
    pub status: StatusMap,
    pub rib: mpsc::Sender<RibMsg>,
    /// Connections the listener accepted from this peer; closed when the peer is removed, which
    /// ends the session (with Cease/Peer De-configured if it is up).
    pub incoming: mpsc::Receiver<TcpStream>,
    /// Set R bit in the first OPEN (this speaker restarted).
    pub restarting: bool,
}

impl Session {
    fn set_state(&self, s: State) {
        if let Ok(mut st) = self.status.lock()
            && let Some(p) = st.get_mut(&self.id)
            && p.state != s
        {
            p.state = s;
            p.since = SystemTime::now();
            if s == State::Established {
                p.established_at = Some(Instant::now());
                p.established_count += 1;
            } else {
                p.established_at = None;
            }
        }
    }

    fn set_error(&self, e: &SessErr) {
        tracing::info!(peer = %self.cfg.address, error = %e, "session ended");
        if let Ok(mut st) = self.status.lock()
            && let Some(p) = st.get_mut(&self.id)
        {
            p.last_error = Some(e.to_string());
        }
    }

    fn opts(&self) -> SockOpts {
        SockOpts { password: self.cfg.password.clone(), ttl_security: self.cfg.ttl_security }
    }

    fn hold_time(&self) -> u16 {
        self.cfg.hold_time.unwrap_or(self.spk.hold_time)
    }

    fn our_open(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .cfg
            .families
            .iter()
            .map(|f| {
                let (afi, safi) = f.afi_safi();
                Capability::Multiprotocol { afi, safi }
            })
            .collect();
        caps.push(Capability::RouteRefresh);
        if let Some(gr) = &self.spk.graceful_restart {
            caps.push(Capability::GracefulRestart(GracefulRestart {
                restarting: self.restarting,
                notification: false,
                restart_time: self.cfg.restart_time.unwrap_or(gr.restart_time).min(0x0fff),
                families: self.cfg.families.iter().map(|f| (f.afi_safi().0, SAFI_UNICAST, true)).collect(),
            }));
        }
        Open::new(self.spk.asn, self.hold_time(), self.spk.router_id, caps)
    }

    /// Runs the session forever.
    pub(crate) async fn run(mut self) {
        let mut carried: Option<TcpStream> = None;
        let mut failed = false;
        loop {
            self.set_state(State::Idle);
            let conn = match carried.take() {
                Some(s) => Conn::new(s, false),
                None => match self.connect_or_accept(failed).await {
                    Some((s, out)) => Conn::new(s, out),
                    None => return,
                },
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    self.set_error(&SessErr::Io(e));
                    failed = true;
                    continue;
                }
            };
            let err = match self.handshake(conn).await {
                Ok((conn, open)) => {
                    let e = self.established(conn, open).await;
                    let graceful = e.graceful();
                    // Error first, so nobody sees the session down without its reason.
                    self.set_error(&e);
                    self.set_state(State::Idle);
                    if self.rib.send(RibMsg::Down { peer: self.id, graceful }).await.is_err() {
                        return;
                    }
                    // The restart flag only applies to the first session after our restart.
                    self.restarting = false;
                    e
                }
                Err(e) => {
                    self.set_error(&e);
                    e
                }
            };
            failed = true;
            if let SessErr::PeerRestart(s) = err {
                carried = Some(s);
                failed = false;
            }
        }
    }

    fn prepare_inbound(&self, s: &TcpStream) {
        if let Some(h) = self.cfg.ttl_security
            && let Err(e) = socket::set_gtsm(s, self.cfg.address.is_ipv6(), h)
        {
            tracing::warn!(peer = %self.cfg.address, error = %e, "GTSM on accepted socket");
        }
    }

    /// Idle → Connect/Active until a TCP connection exists. `None` when the speaker shut down.
    async fn connect_or_accept(&mut self, wait_first: bool) -> Option<(TcpStream, bool)> {
        let retry = self.spk.connect_retry;
        if self.cfg.passive {
            self.set_state(State::Active);
            let s = self.incoming.recv().await?;
            self.prepare_inbound(&s);
            return Some((s, false));
        }
        if wait_first {
            self.set_state(State::Active);
            tokio::select! {
                s = self.incoming.recv() => {
                    let s = s?;
                    self.prepare_inbound(&s);
                    return Some((s, false));
                }
                _ = sleep(retry) => {}
            }
        }
        loop {
            self.set_state(State::Connect);
            let peer = SocketAddr::new(self.cfg.address, self.cfg.port);
            let opts = self.opts();
            tokio::select! {
                r = timeout(retry, socket::connect(peer, self.cfg.local_address, &opts)) => {
                    match r {
                        Ok(Ok(s)) => return Some((s, true)),
                        Ok(Err(e)) => self.set_error(&SessErr::Io(e)),
                        Err(_) => self.set_error(&SessErr::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
                    }
                }
                s = self.incoming.recv() => {
                    let s = s?;
                    self.prepare_inbound(&s);
                    return Some((s, false));
                }
            }
            self.set_state(State::Active);
            tokio::select! {
                s = self.incoming.recv() => {
                    let s = s?;
                    self.prepare_inbound(&s);
                    return Some((s, false));
                }
                _ = sleep(retry) => {}
            }
        }
    }

    /// Checks the peer's OPEN (RFC 4271 §6.2 semantics beyond the codec).
    fn check_open(&self, o: &Open) -> Option<Notification> {
        if o.asn() != self.cfg.asn {
            return Some(Notification::new(code::OPEN, 2));
        }
        if o.router_id == self.spk.router_id && o.asn() == self.spk.asn {
            return Some(Notification::new(code::OPEN, 3));
        }
        None
    }

    /// OpenSent → OpenConfirm → Established, resolving collisions on the way.
    async fn handshake(&mut self, mut conn: Conn) -> Result<(Conn, Open), SessErr> {
        conn.send(&Message::Open(self.our_open())).await?;
        self.set_state(State::OpenSent);
        let mut peer_open: Option<Open> = None;
        let mut deadline = tokio::time::Instant::now() + LARGE_HOLD;
        loop {
            tokio::select! {
                r = conn.r.next() => {
                    let m = match r? {
                        Ok(m) => m,
                        Err(e) => return Err(conn.notify(e.notification()).await),
                    };
                    match (m, peer_open.is_some()) {
                        (Message::Open(o), false) => {
                            if let Some(n) = self.check_open(&o) {
                                return Err(conn.notify(n).await);
                            }
                            conn.r.ctx.four_octet_as = o.four_octet_as().is_some();
                            conn.send(&Message::Keepalive).await?;
                            self.set_state(State::OpenConfirm);
                            let hold = o.hold_time.min(self.hold_time());
                            deadline = tokio::time::Instant::now()
                                + if hold == 0 { LARGE_HOLD } else { Duration::from_secs(hold.into()) };
                            peer_open = Some(o);
                        }
                        (Message::Keepalive, true) => {
                            // Invariant: the match arm requires peer_open to be set.
                            let o = peer_open.take().expect("OPEN received");
                            return Ok((conn, o));
                        }
                        (Message::Notification(n), _) => return Err(SessErr::Received(n)),
                        // RFC 6608: unexpected message in OpenSent (1) / OpenConfirm (2).
                        (_, false) => return Err(conn.notify(Notification::new(code::FSM, 1)).await),
                        (_, true) => return Err(conn.notify(Notification::new(code::FSM, 2)).await),
                    }
                }
                _ = sleep_until(deadline) => {
                    return Err(conn.notify(Notification::new(code::HOLD_TIMER, 0)).await);
                }
                s = self.incoming.recv() => {
                    let Some(s) = s else {
                        return Err(conn.notify(Notification::new(code::CEASE, CEASE_DECONFIGURED)).await);
                    };
                    self.prepare_inbound(&s);
                    if let Some((new, o)) = self.collide(&conn, s).await {
                        let _ = conn.notify(Notification::new(code::CEASE, 7)).await;
                        conn = new;
                        self.set_state(State::OpenConfirm);
                        peer_open = Some(o);
                    }
                }
            }
        }
    }

    /// Connection collision (RFC 4271 §6.8) with a new inbound connection. Returns the new
    /// connection (already in OpenConfirm) if it wins, after closing nothing; the caller closes
    /// the old one. A losing new connection is closed here with Cease/7.
    async fn collide(&self, cur: &Conn, s: TcpStream) -> Option<(Conn, Open)> {
        let mut new = Conn::new(s, false).ok()?;
        let res = timeout(Duration::from_secs(10), async {
            new.send(&Message::Open(self.our_open())).await.ok()?;
            match new.r.next().await.ok()?.ok()? {
                Message::Open(o) => Some(o),
                _ => None,
            }
        })
        .await;
        let o = match res {
            Ok(Some(o)) => o,
            _ => return None,
        };
        if let Some(n) = self.check_open(&o) {
            let _ = new.notify(n).await;
            return None;
        }
        let local_wins = u32::from(self.spk.router_id) > u32::from(o.router_id);
        // The higher BGP identifier keeps the connection it initiated.
        let keep_current = local_wins && cur.outbound;
        if keep_current {
            let _ = new.notify(Notification::new(code::CEASE, 7)).await;
            return None;
        }
        new.r.ctx.four_octet_as = o.four_octet_as().is_some();
        new.send(&Message::Keepalive).await.ok()?;
        Some((new, o))
    }

    async fn established(&mut self, conn: Conn, open: Open) -> SessErr {
        let Conn { mut r, mut w, local, .. } = conn;
        let hold = open.hold_time.min(self.hold_time());
        let hold_d = Duration::from_secs(hold.into());
        let keepalive_d = Duration::from_secs(keepalive_secs(hold, self.cfg.keepalive_time).into());
        let ours = self.cfg.families.clone();
        let families: Vec<Family> = open.families().into_iter().filter(|f| ours.contains(f)).collect();
        let peer_gr = open.graceful_restart().is_some();
        let (tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let info = SessionInfo { open, local, ctx: r.ctx, families };
        if self.rib.send(RibMsg::Up { peer: self.id, session: info, out: tx }).await.is_err() {
            return SessErr::Closed;
        }
        self.set_state(State::Established);
        let ka = codec::to_bytes(&Message::Keepalive, &r.ctx).unwrap_or_default();
        let mut pending: Vec<u8> = Vec::new();
        let mut off = 0usize;
        let mut hold_deadline = tokio::time::Instant::now() + hold_d;
        let mut ka_deadline = tokio::time::Instant::now() + keepalive_d;
        loop {
            tokio::select! {
                m = r.next() => {
                    let m = match m {
                        Ok(Ok(m)) => m,
                        Ok(Err(e)) => return notify_w(&mut w, e.notification(), r.ctx).await,
                        Err(e) => return e,
                    };
                    hold_deadline = tokio::time::Instant::now() + hold_d;
                    match m {
                        Message::Update(u) => {
                            if self.rib.send(RibMsg::Update { peer: self.id, update: Box::new(u) }).await.is_err() {
                                return SessErr::Closed;
                            }
                        }
                        Message::Keepalive => {}
                        Message::Notification(n) => return SessErr::Received(n),
                        Message::RouteRefresh(rr) => {
                            if let Some(family) = Family::from_afi_safi(rr.afi, rr.safi) {
                                let _ = self.rib.send(RibMsg::Refresh { peer: self.id, family }).await;
                            }
                        }
                        Message::Open(_) => return notify_w(&mut w, Notification::new(code::FSM, 3), r.ctx).await,
                    }
                }
                n = w.write(&pending[off..]), if off < pending.len() => {
                    match n {
                        Ok(0) => return SessErr::Closed,
                        Ok(n) => {
                            off += n;
                            if off == pending.len() {
                                pending.clear();
                                off = 0;
                            }
                        }
                        Err(e) => return SessErr::Io(e),
                    }
                }
                b = out_rx.recv(), if pending.len() - off < OUT_HIGH_WATER => {
                    match b {
                        Some(b) => {
                            pending.extend_from_slice(&b);
                            ka_deadline = tokio::time::Instant::now() + keepalive_d;
                        }
                        None => return SessErr::Closed,
                    }
                }
                _ = sleep_until(ka_deadline), if hold > 0 => {
                    pending.extend_from_slice(&ka);
                    ka_deadline = tokio::time::Instant::now() + keepalive_d;
                }
                _ = sleep_until(hold_deadline), if hold > 0 => {
                    return notify_w(&mut w, Notification::new(code::HOLD_TIMER, 0), r.ctx).await;
                }
                s = self.incoming.recv() => {
                    let Some(s) = s else {
                        return notify_w(&mut w, Notification::new(code::CEASE, CEASE_DECONFIGURED), r.ctx).await;
                    };
                    if peer_gr {
                        // RFC 4724 §4.2: a new connection from a restarting peer ends the old one.
                        return SessErr::PeerRestart(s);
                    }
                    if let Ok(mut c) = Conn::new(s, false) {
                        let _ = c.notify(Notification::new(code::CEASE, 7)).await;
                    }
                }
            }
        }
    }
}

/// Seconds between KEEPALIVEs for a negotiated `hold` time: the configured interval, but never more
/// than a third of the hold time (RFC 4271 §10), which is also the default.
pub(crate) fn keepalive_secs(hold: u16, configured: Option<u16>) -> u16 {
    let third = (hold / 3).max(1);
    configured.filter(|k| *k > 0).map_or(third, |k| k.min(third))
}

/// Sends a NOTIFICATION on a write half (best effort, bounded in time).
async fn notify_w(w: &mut OwnedWriteHalf, n: Notification, ctx: Ctx) -> SessErr {
    let bytes = codec::to_bytes(&Message::Notification(n.clone()), &ctx).unwrap_or_default();
    let _ = timeout(Duration::from_secs(2), w.write_all(&bytes)).await;
    let _ = timeout(Duration::from_secs(1), w.shutdown()).await;
    SessErr::Sent(n)
}
