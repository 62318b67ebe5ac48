//! Speaker and peer configuration.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::types::Family;

/// Graceful restart settings (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Restart time advertised to peers: how long they keep our routes while we are down.
    pub restart_time: u16,
    /// Set the Restart State bit: this speaker has just restarted and peers hold our routes
    /// as stale until we send End-of-RIB.
    pub restarting: bool,
    /// Longest time we keep a restarting peer's stale routes, whatever it advertised.
    pub max_restart_time: u16,
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        GracefulRestartConfig { restart_time: 120, restarting: false, max_restart_time: 120 }
    }
}

/// Configuration of the whole speaker.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Local AS (4-octet).
    pub asn: u32,
    /// Addresses to accept connections on, one listening socket each (empty: no listener). An IPv6
    /// socket takes IPv6 connections only, so `0.0.0.0:179` and `[::]:179` can be listened on together.
    pub listen: Vec<SocketAddr>,
    /// Hold time proposed in OPEN (0 or at least 3).
    pub hold_time: u16,
    /// ConnectRetryTime.
    pub connect_retry: Duration,
    /// Route reflector cluster ID: when set, iBGP peers marked `rr_client` are reflected to.
    pub cluster_id: Option<Ipv4Addr>,
    /// Graceful restart, if enabled.
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// Peers.
    pub peers: Vec<PeerConfig>,
}

impl SpeakerConfig {
    /// A configuration with common defaults (hold 90 s, connect retry 5 s, no listener).
    pub fn new(router_id: Ipv4Addr, asn: u32) -> SpeakerConfig {
        SpeakerConfig {
            router_id,
            asn,
            listen: Vec::new(),
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            cluster_id: None,
            graceful_restart: None,
            peers: Vec::new(),
        }
    }
}

/// Configuration of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Peer address.
    pub address: IpAddr,
    /// Peer AS.
    pub asn: u32,
    /// Peer TCP port to connect to.
    pub port: u16,
    /// Local address to bind outgoing connections to.
    pub local_address: Option<IpAddr>,
    /// Never connect; wait for the peer.
    pub passive: bool,
    /// TCP MD5 signature key (RFC 2385).
    pub password: Option<String>,
    /// GTSM (RFC 5082): the peer is at most this many hops away; sets TTL 255 and min TTL.
    pub ttl_security: Option<u8>,
    /// The peer is a route reflector client (iBGP only; needs `cluster_id`).
    pub rr_client: bool,
    /// Families to negotiate.
    pub families: Vec<Family>,
    /// Hold time for this peer, overriding the speaker's.
    pub hold_time: Option<u16>,
    /// Seconds between KEEPALIVEs to this peer (default: a third of the negotiated hold time, and
    /// never more than that).
    pub keepalive_time: Option<u16>,
    /// Graceful-restart time advertised to this peer (how long it keeps our routes while we
    /// restart), overriding [`GracefulRestartConfig::restart_time`].
    pub restart_time: Option<u16>,
    /// Set ourselves as next hop also towards this iBGP peer (always done for eBGP).
    pub next_hop_self: bool,
    /// IPv4 next hop for IPv4 routes when the session runs over IPv6.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// IPv6 next hop for IPv6 routes when the session runs over IPv4.
    pub next_hop_v6: Option<Ipv6Addr>,
}

impl PeerConfig {
    /// A peer with defaults: port 179, active, IPv4 and IPv6 unicast.
    pub fn new(address: IpAddr, asn: u32) -> PeerConfig {
        PeerConfig {
            address,
            asn,
            port: 179,
            local_address: None,
            passive: false,
            password: None,
            ttl_security: None,
            rr_client: false,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            hold_time: None,
            keepalive_time: None,
            restart_time: None,
            next_hop_self: false,
            next_hop_v4: None,
            next_hop_v6: None,
        }
    }
}
