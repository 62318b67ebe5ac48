//! Runs a BGP speaker from a JSON config file, printing peer state and route changes.
//!
//! Usage: `speaker CONFIG.json`. Commands on stdin, one per line:
//! `announce PREFIX [NEXT_HOP]`, `withdraw PREFIX`, `dump` (prints the Loc-RIB then `end`),
//! `peers`. Output lines start with `peer`, `best`, `count`, `route` or `end`.
//!
//! ```json
//! {"router_id": "10.0.0.1", "asn": 65001, "listen": ["10.0.0.1:179", "[fd00::1]:179"],
//!  "cluster_id": null, "graceful_restart": {"restart_time": 120, "restarting": false},
//!  "peers": [{"address": "10.0.0.2", "asn": 65002, "password": "secret",
//!             "keepalive_time": 10, "restart_time": 60}],
//!  "originate": ["10.100.0.0/24"], "print_routes": true, "count_interval_ms": 0}
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tabby_bgp::{AcceptAll, Family, GracefulRestartConfig, PeerConfig, Prefix, RouteAttrs, Speaker, SpeakerConfig};
use tokio::io::AsyncBufReadExt;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    router_id: Ipv4Addr,
    asn: u32,
    /// One address or a list (one listening socket each).
    #[serde(default)]
    listen: Listen,
    #[serde(default = "default_hold")]
    hold_time: u16,
    #[serde(default = "default_retry")]
    connect_retry: u64,
    cluster_id: Option<Ipv4Addr>,
    graceful_restart: Option<Gr>,
    #[serde(default)]
    peers: Vec<Peer>,
    #[serde(default)]
    originate: Vec<String>,
    #[serde(default = "default_true")]
    print_routes: bool,
    /// Print `count` lines this often (0: never).
    #[serde(default)]
    count_interval_ms: u64,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Listen {
    #[default]
    None,
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Gr {
    #[serde(default = "default_restart")]
    restart_time: u16,
    #[serde(default)]
    restarting: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    address: IpAddr,
    asn: u32,
    #[serde(default = "default_port")]
    port: u16,
    local_address: Option<IpAddr>,
    #[serde(default)]
    passive: bool,
    password: Option<String>,
    ttl_security: Option<u8>,
    #[serde(default)]
    rr_client: bool,
    families: Option<Vec<String>>,
    hold_time: Option<u16>,
    keepalive_time: Option<u16>,
    restart_time: Option<u16>,
    #[serde(default)]
    next_hop_self: bool,
    next_hop_v4: Option<Ipv4Addr>,
    next_hop_v6: Option<Ipv6Addr>,
}

fn default_hold() -> u16 {
    90
}
fn default_retry() -> u64 {
    5
}
fn default_restart() -> u16 {
    120
}
fn default_port() -> u16 {
    179
}
fn default_true() -> bool {
    true
}

fn family(s: &str) -> Result<Family, String> {
    match s {
        "ipv4" | "ipv4-unicast" => Ok(Family::Ipv4Unicast),
        "ipv6" | "ipv6-unicast" => Ok(Family::Ipv6Unicast),
        _ => Err(format!("unknown family {s}")),
    }
}

fn describe(a: &RouteAttrs) -> String {
    let path = a
        .attrs
        .as_path
        .as_ref()
        .map(|p| p.0.iter().flat_map(|s| s.asns.iter().map(|x| x.to_string())).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let clusters: Vec<String> = a.attrs.cluster_list.iter().map(|c| c.to_string()).collect();
    format!(
        "nh={} aspath=[{}] lp={} med={} originator={} clusters=[{}]",
        a.next_hop,
        path,
        a.attrs.local_pref.map_or("-".into(), |v| v.to_string()),
        a.attrs.med.map_or("-".into(), |v| v.to_string()),
        a.attrs.originator_id.map_or("-".into(), |v| v.to_string()),
        clusters.join(" ")
    )
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: speaker CONFIG.json")?;
    let c: Config = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut cfg = SpeakerConfig::new(c.router_id, c.asn);
    cfg.listen = match c.listen {
        Listen::None => Vec::new(),
        Listen::One(a) => vec![a],
        Listen::Many(v) => v,
    };
    cfg.hold_time = c.hold_time;
    cfg.connect_retry = Duration::from_secs(c.connect_retry);
    cfg.cluster_id = c.cluster_id;
    cfg.graceful_restart = c.graceful_restart.map(|g| GracefulRestartConfig {
        restart_time: g.restart_time,
        restarting: g.restarting,
        max_restart_time: g.restart_time.max(120),
    });
    for p in c.peers {
        let mut pc = PeerConfig::new(p.address, p.asn);
        pc.port = p.port;
        pc.local_address = p.local_address;
        pc.passive = p.passive;
        pc.password = p.password;
        pc.ttl_security = p.ttl_security;
        pc.rr_client = p.rr_client;
        if let Some(f) = p.families {
            pc.families = f.iter().map(|s| family(s)).collect::<Result<_, _>>()?;
        }
        pc.hold_time = p.hold_time;
        pc.keepalive_time = p.keepalive_time;
        pc.restart_time = p.restart_time;
        pc.next_hop_self = p.next_hop_self;
        pc.next_hop_v4 = p.next_hop_v4;
        pc.next_hop_v6 = p.next_hop_v6;
        cfg.peers.push(pc);
    }
    let addrs: Vec<IpAddr> = cfg.peers.iter().map(|p| p.address).collect();
    let speaker = Speaker::start(cfg, Arc::new(AcceptAll)).await?;
    for p in &c.originate {
        speaker.originate(p.parse::<Prefix>()?, None).await;
    }
    let mut events = if c.print_routes { Some(speaker.subscribe().await) } else { None };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let count_every = Duration::from_millis(c.count_interval_ms.max(1));
    let mut count_tick = tokio::time::interval(count_every);
    let mut last_peers = String::new();
    let mut last_count = (usize::MAX, usize::MAX);
    println!("started");
    loop {
        tokio::select! {
            ev = async { events.as_mut()?.recv().await }, if events.is_some() => {
                let Some(ev) = ev else { events = None; continue };
                for e in ev {
                    match &e.best {
                        Some((id, a)) => {
                            let from = if *id == 0 { "local".to_string() } else { addrs[*id as usize - 1].to_string() };
                            println!("best {} from={} {}", e.prefix, from, describe(a));
                        }
                        None => println!("best {} none", e.prefix),
                    }
                }
            }
            line = lines.next_line(), if stdin_open => {
                let Ok(Some(line)) = line else { stdin_open = false; continue };
                let w: Vec<&str> = line.split_whitespace().collect();
                match w.as_slice() {
                    ["announce", p, rest @ ..] => match p.parse::<Prefix>() {
                        Ok(p) => speaker.originate(p, rest.first().and_then(|n| n.parse().ok())).await,
                        Err(e) => println!("error {e}"),
                    },
                    ["withdraw", p] => match p.parse::<Prefix>() {
                        Ok(p) => speaker.withdraw(p).await,
                        Err(e) => println!("error {e}"),
                    },
                    ["dump"] => {
                        for f in Family::ALL {
                            for r in speaker.routes(f).await {
                                let from = r.peer.map_or("local".to_string(), |a| a.to_string());
                                println!("route {} from={} stale={} {}", r.prefix, from, r.stale, describe(&r.attrs));
                            }
                        }
                        println!("end");
                    }
                    ["peers"] => last_peers.clear(),
                    _ => println!("error unknown command {line:?}"),
                }
            }
            _ = tick.tick() => {
                let mut s = String::new();
                for p in speaker.peers() {
                    s.push_str(&format!(
                        "peer {} asn={} state={} received={} advertised={} error={}\n",
                        p.address,
                        p.asn,
                        p.state,
                        p.prefixes_received,
                        p.prefixes_advertised,
                        p.last_error.as_deref().unwrap_or("-").replace(' ', "_"),
                    ));
                }
                if s != last_peers {
                    print!("{s}");
                    last_peers = s;
                }
            }
            _ = count_tick.tick(), if c.count_interval_ms > 0 => {
                let n = (speaker.loc_rib_len(Family::Ipv4Unicast), speaker.loc_rib_len(Family::Ipv6Unicast));
                if n != last_count {
                    println!("count v4={} v6={} t_ms={}", n.0, n.1, now_ms());
                    last_count = n;
                }
            }
        }
    }
}
