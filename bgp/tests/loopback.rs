//! Tabby speakers talking to each other over loopback (no root or other daemons needed).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tabby_bgp::*;
use tabby_testkit::poll::wait;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pfx(s: &str) -> Prefix {
    s.parse().unwrap()
}

async fn wait_for(what: &str, secs: u64, f: impl AsyncFnMut() -> bool) {
    wait(what, Duration::from_secs(secs)).every(Duration::from_millis(50)).until_async(f, String::new).await;
}

async fn route(s: &Speaker, p: &str) -> Option<RouteEntry> {
    let p = pfx(p);
    s.routes(p.family()).await.into_iter().find(|r| r.prefix == p)
}

fn established(s: &Speaker, n: usize) -> bool {
    s.peers().iter().filter(|p| p.state == State::Established).count() == n
}

/// A listening speaker on `addr` (port 0 = any).
async fn listener(
    id: u8,
    asn: u32,
    addr: &str,
    peers: Vec<PeerConfig>,
    tweak: impl FnOnce(&mut SpeakerConfig),
) -> Speaker {
    let mut c = SpeakerConfig::new(Ipv4Addr::new(1, 1, 1, id), asn);
    c.listen = vec![SocketAddr::new(ip(addr), 0)];
    c.connect_retry = Duration::from_secs(1);
    c.hold_time = 9;
    c.peers = peers;
    tweak(&mut c);
    Speaker::start(c, Arc::new(AcceptAll)).await.unwrap()
}

fn passive(addr: &str, asn: u32) -> PeerConfig {
    let mut p = PeerConfig::new(ip(addr), asn);
    p.passive = true;
    p
}

fn active(to: SocketAddr, from: &str, asn: u32) -> PeerConfig {
    let mut p = PeerConfig::new(to.ip(), asn);
    p.port = to.port();
    p.local_address = Some(ip(from));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebgp_four_octet_as_routes_both_ways_and_withdrawals() {
    let mut pa = passive("127.0.0.12", 4_200_000_002);
    pa.next_hop_v6 = Some("fd00::1".parse().unwrap());
    let a = listener(1, 4_200_000_001, "127.0.0.11", vec![pa], |_| {}).await;
    let mut pb = active(a.listen_addr().unwrap(), "127.0.0.12", 4_200_000_001);
    pb.next_hop_v6 = Some("fd00::2".parse().unwrap());
    let b = listener(2, 4_200_000_002, "127.0.0.12", vec![pb], |_| {}).await;
    wait_for("established", 10, async || established(&a, 1) && established(&b, 1)).await;
    a.originate(pfx("10.1.0.0/16"), None).await;
    a.originate(pfx("fd10::/48"), None).await;
    b.originate(pfx("10.2.0.0/16"), None).await;
    wait_for("routes", 10, async || {
        route(&b, "10.1.0.0/16").await.is_some()
            && route(&b, "fd10::/48").await.is_some()
            && route(&a, "10.2.0.0/16").await.is_some()
    })
    .await;
    let r = route(&b, "10.1.0.0/16").await.unwrap();
    assert_eq!(r.attrs.next_hop, ip("127.0.0.11"));
    assert_eq!(r.attrs.attrs.as_path, Some(AsPath::sequence(vec![4_200_000_001])));
    let r6 = route(&b, "fd10::/48").await.unwrap();
    assert_eq!(r6.attrs.next_hop, ip("fd00::1"));
    assert_eq!(b.peers()[0].prefixes_received, 2);
    assert_eq!(a.peers()[0].prefixes_advertised, 2);
    a.withdraw(pfx("10.1.0.0/16")).await;
    wait_for("withdrawal", 10, async || route(&b, "10.1.0.0/16").await.is_none()).await;
    assert!(route(&b, "fd10::/48").await.is_some());
    assert!(a.peers()[0].uptime().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_right_key_connects_wrong_key_does_not() {
    let mut pa = passive("127.0.0.22", 65002);
    pa.password = Some("right".into());
    let mut pa3 = passive("127.0.0.23", 65003);
    pa3.password = Some("right".into());
    let a = listener(1, 65001, "127.0.0.21", vec![pa, pa3], |_| {}).await;
    let mut pb = active(a.listen_addr().unwrap(), "127.0.0.22", 65001);
    pb.password = Some("right".into());
    let b = listener(2, 65002, "127.0.0.22", vec![pb], |_| {}).await;
    let mut pc = active(a.listen_addr().unwrap(), "127.0.0.23", 65001);
    pc.password = Some("wrong".into());
    let c = listener(3, 65003, "127.0.0.23", vec![pc], |_| {}).await;
    wait_for("right key established", 10, async || established(&b, 1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(c.peers()[0].state, State::Established, "wrong key must not connect");
    assert_ne!(a.peers()[1].state, State::Established);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_reflector_with_three_clients() {
    let clients = ["127.0.0.32", "127.0.0.33", "127.0.0.34"];
    let rr = listener(
        1,
        65000,
        "127.0.0.31",
        clients
            .iter()
            .map(|c| {
                let mut p = passive(c, 65000);
                p.rr_client = true;
                p
            })
            .collect(),
        |c| c.cluster_id = Some(Ipv4Addr::new(9, 9, 9, 9)),
    )
    .await;
    let mut cs = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let s = listener(2 + i as u8, 65000, c, vec![active(rr.listen_addr().unwrap(), c, 65000)], |_| {}).await;
        cs.push(s);
    }
    wait_for("established", 10, async || established(&rr, 3)).await;
    for (i, c) in cs.iter().enumerate() {
        c.originate(pfx(&format!("10.3{i}.0.0/16")), None).await;
    }
    for (i, c) in cs.iter().enumerate() {
        for (j, client) in clients.iter().enumerate() {
            if i == j {
                continue;
            }
            let p = format!("10.3{j}.0.0/16");
            wait_for("reflected route", 10, async || route(c, &p).await.is_some()).await;
            let r = route(c, &p).await.unwrap();
            assert_eq!(
                r.attrs.attrs.originator_id,
                Some(Ipv4Addr::new(1, 1, 1, 2 + j as u8)),
                "ORIGINATOR_ID of {p} at client {i}"
            );
            assert_eq!(r.attrs.attrs.cluster_list, vec![Ipv4Addr::new(9, 9, 9, 9)]);
            assert_eq!(r.attrs.next_hop, ip(client), "next hop unchanged by reflection");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_helper_keeps_routes_until_end_of_rib() {
    let gr = |c: &mut SpeakerConfig| c.graceful_restart = Some(GracefulRestartConfig::default());
    let a = listener(1, 65001, "127.0.0.41", vec![passive("127.0.0.42", 65002)], gr).await;
    let to = a.listen_addr().unwrap();
    let b = listener(2, 65002, "127.0.0.42", vec![active(to, "127.0.0.42", 65001)], gr).await;
    b.originate(pfx("10.42.0.0/16"), None).await;
    b.originate(pfx("10.43.0.0/16"), None).await;
    wait_for("routes", 10, async || route(&a, "10.43.0.0/16").await.is_some()).await;
    drop(b);
    // The restarting peer's routes stay, marked stale.
    wait_for("session down", 10, async || !established(&a, 1)).await;
    let r = route(&a, "10.42.0.0/16").await.expect("stale route kept");
    assert!(r.stale);
    // Restart: only 10.42/16 is announced again; End-of-RIB sweeps 10.43/16.
    let b = listener(2, 65002, "127.0.0.42", vec![active(to, "127.0.0.42", 65001)], |c| {
        c.graceful_restart = Some(GracefulRestartConfig { restarting: true, ..GracefulRestartConfig::default() })
    })
    .await;
    b.originate(pfx("10.42.0.0/16"), None).await;
    wait_for("stale route swept", 15, async || route(&a, "10.43.0.0/16").await.is_none()).await;
    let r = route(&a, "10.42.0.0/16").await.expect("refreshed route");
    assert!(!r.stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_first_gets_every_best_path_then_changes() {
    let a = listener(1, 65001, "127.0.0.51", vec![passive("127.0.0.52", 65002)], |_| {}).await;
    let b = listener(2, 65002, "127.0.0.52", vec![active(a.listen_addr().unwrap(), "127.0.0.52", 65001)], |_| {}).await;
    a.originate(pfx("10.51.0.0/16"), None).await;
    a.originate(pfx("fd51::/48"), None).await;
    b.originate(pfx("10.52.0.0/16"), None).await;
    wait_for("routes", 10, async || route(&b, "10.51.0.0/16").await.is_some()).await;
    // Subscribed after the routes arrived: they come as the first batch, learned and local alike.
    let mut rx = b.subscribe().await;
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("first batch").expect("open");
    let mut got: Vec<(String, Option<IpAddr>)> =
        first.iter().map(|e| (e.prefix.to_string(), e.best.as_ref().map(|(_, a)| a.next_hop))).collect();
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], ("10.51.0.0/16".to_string(), Some(ip("127.0.0.51"))));
    assert_eq!(got[1].0, "10.52.0.0/16");
    assert!(first.iter().all(|e| e.best.is_some()));
    // Then changes only.
    a.withdraw(pfx("10.51.0.0/16")).await;
    let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("change").expect("open");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].prefix, pfx("10.51.0.0/16"));
    assert!(next[0].best.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_active_collision_leaves_one_stable_session() {
    // Both speakers listen on the same port of their own address and both connect.
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let mk = |id: u8, me: &str, other: &str| {
        let mut c = SpeakerConfig::new(Ipv4Addr::new(1, 1, 1, id), 65000 + u32::from(id));
        c.listen = vec![SocketAddr::new(ip(me), port)];
        c.connect_retry = Duration::from_millis(300);
        let mut p = PeerConfig::new(ip(other), 65000 + u32::from(3 - id));
        p.port = port;
        p.local_address = Some(ip(me));
        c.peers = vec![p];
        c
    };
    let a = Speaker::start(mk(1, "127.0.0.61", "127.0.0.62"), Arc::new(AcceptAll)).await.unwrap();
    let b = Speaker::start(mk(2, "127.0.0.62", "127.0.0.61"), Arc::new(AcceptAll)).await.unwrap();
    wait_for("established", 10, async || established(&a, 1) && established(&b, 1)).await;
    a.originate(pfx("10.61.0.0/16"), None).await;
    wait_for("route", 10, async || route(&b, "10.61.0.0/16").await.is_some()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(established(&a, 1) && established(&b, 1));
    assert_eq!(a.peers()[0].established_count, 1, "no flapping: {:?}", a.peers()[0]);
    assert_eq!(b.peers()[0].established_count, 1, "no flapping: {:?}", b.peers()[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_added_changed_and_removed_live_touch_only_their_session() {
    // Hub A (AS 65071) starts with only B; C joins, changes its keepalive, and leaves, while A's
    // session with B stays up the whole time.
    let a = listener(1, 65071, "127.0.0.71", vec![passive("127.0.0.72", 65072)], |_| {}).await;
    let hub = a.listen_addr().unwrap();
    let b = listener(2, 65072, "127.0.0.72", vec![active(hub, "127.0.0.72", 65071)], |_| {}).await;
    let c = listener(3, 65073, "127.0.0.73", vec![active(hub, "127.0.0.73", 65071)], |_| {}).await;
    wait_for("A-B established", 10, async || established(&a, 1) && established(&b, 1)).await;
    let b_since = b.peers()[0].since;
    c.originate(pfx("10.73.0.0/16"), None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!established(&c, 1), "A does not know C yet: {:?}", c.peers());

    a.add_peer(passive("127.0.0.73", 65073)).await.unwrap();
    assert!(matches!(a.add_peer(passive("127.0.0.73", 65073)).await, Err(PeerError::Exists(_))));
    wait_for("A-C established", 10, async || established(&a, 2) && established(&c, 1)).await;
    wait_for("B learns C's route through A", 10, async || route(&b, "10.73.0.0/16").await.is_some()).await;

    // Same configuration: nothing restarts. A new keepalive: only C's session restarts.
    assert!(!a.update_peer(passive("127.0.0.73", 65073)).await.unwrap());
    let mut changed = passive("127.0.0.73", 65073);
    changed.keepalive_time = Some(1);
    assert!(a.update_peer(changed).await.unwrap());
    wait_for("C re-established", 15, async || c.peers()[0].established_count == 2 && established(&c, 1)).await;
    wait_for("A has both again", 10, async || established(&a, 2)).await;
    assert_eq!(a.peer_configs().await.iter().find(|p| p.address == ip("127.0.0.73")).unwrap().keepalive_time, Some(1));

    assert!(a.remove_peer(ip("127.0.0.73")).await);
    assert!(!a.remove_peer(ip("127.0.0.73")).await);
    wait_for("C's session ended with Cease/Peer De-configured", 10, async || {
        c.peers()[0].last_error.as_deref().is_some_and(|e| e.contains("(6/3)"))
    })
    .await;
    wait_for("C's route withdrawn from B", 10, async || route(&b, "10.73.0.0/16").await.is_none()).await;
    assert_eq!(a.peers().len(), 1);

    // B never noticed any of it.
    assert!(established(&b, 1) && established(&a, 1));
    assert_eq!(b.peers()[0].established_count, 1, "{:?}", b.peers()[0]);
    assert_eq!(b.peers()[0].since, b_since);
    assert_eq!(a.peers()[0].established_count, 1, "{:?}", a.peers()[0]);
}
