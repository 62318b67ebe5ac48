//! Per-peer state as published to the agent (NodeStatus, `kubectl tabby node status`).

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

/// RFC 4271 §8.2.2 session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Idle.
    Idle,
    /// Connect: outgoing connection in progress.
    Connect,
    /// Active: waiting for a connection.
    Active,
    /// OpenSent.
    OpenSent,
    /// OpenConfirm.
    OpenConfirm,
    /// Established.
    Established,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Observable state of one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Peer address.
    pub address: IpAddr,
    /// Peer AS.
    pub asn: u32,
    /// Current state.
    pub state: State,
    /// When the current state was entered (wall clock).
    pub since: SystemTime,
    /// When the session became Established, if it is.
    pub established_at: Option<Instant>,
    /// Last error (sent or received NOTIFICATION, TCP error).
    pub last_error: Option<String>,
    /// Prefixes in the peer's Adj-RIB-In.
    pub prefixes_received: usize,
    /// Prefixes in the peer's Adj-RIB-Out.
    pub prefixes_advertised: usize,
    /// Number of transitions to Established.
    pub established_count: u32,
}

impl PeerStatus {
    /// A fresh Idle status.
    pub fn new(address: IpAddr, asn: u32) -> PeerStatus {
        PeerStatus {
            address,
            asn,
            state: State::Idle,
            since: SystemTime::now(),
            established_at: None,
            last_error: None,
            prefixes_received: 0,
            prefixes_advertised: 0,
            established_count: 0,
        }
    }

    /// Time since the session became Established.
    pub fn uptime(&self) -> Option<Duration> {
        self.established_at.map(|t| t.elapsed())
    }
}
