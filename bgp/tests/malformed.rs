//! A raw TCP test peer sends malformed messages; the speaker must answer with the NOTIFICATION
//! RFC 4271 §6 (and RFC 6608, RFC 7313) prescribes, or treat the routes as withdrawn (RFC 7606).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tabby_bgp::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PEER_AS: u16 = 65002;

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    v.push(ty);
    v.extend_from_slice(body);
    v
}

fn open_body(version: u8, asn: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&asn.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    b
}

fn good_open() -> Vec<u8> {
    // Capabilities: MP IPv4 unicast, 4-octet AS 65002.
    let caps = [2, 6, 1, 4, 0, 1, 0, 1, 2, 6, 65, 4, 0, 0, 0xfd, 0xea];
    msg(1, &open_body(4, PEER_AS, 90, [2, 2, 2, 2], &caps))
}

fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

/// ORIGIN IGP, AS_PATH [65002] (4-octet), NEXT_HOP 127.0.0.52.
const GOOD_ATTRS: [u8; 20] = [0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea, 0x40, 3, 4, 127, 0, 0, 52];

async fn speaker(n: u8) -> (Speaker, SocketAddr, IpAddr) {
    let me: IpAddr = format!("127.0.{n}.1").parse().unwrap();
    let peer: IpAddr = format!("127.0.{n}.2").parse().unwrap();
    let mut c = SpeakerConfig::new(Ipv4Addr::new(1, 1, 1, 1), 65001);
    c.listen = vec![SocketAddr::new(me, 0)];
    let mut p = PeerConfig::new(peer, u32::from(PEER_AS));
    p.passive = true;
    p.families = vec![Family::Ipv4Unicast];
    c.peers = vec![p];
    let s = Speaker::start(c, Arc::new(AcceptAll)).await.unwrap();
    let addr = s.listen_addr().unwrap();
    (s, addr, peer)
}

async fn connect(to: SocketAddr, from: IpAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// Reads messages until a NOTIFICATION (returns code, subcode) or EOF/timeout (None).
async fn read_notification(s: &mut TcpStream) -> Option<(u8, u8)> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        while buf.len() >= 19 {
            let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
            if buf.len() < len {
                break;
            }
            if buf[18] == 3 {
                return Some((buf[19], buf[20]));
            }
            buf.drain(..len);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

async fn establish(s: &mut TcpStream) {
    s.write_all(&good_open()).await.unwrap();
    s.write_all(&msg(4, &[])).await.unwrap();
}

/// (name, send a good OPEN + KEEPALIVE first, bytes, expected code, expected subcode)
fn cases() -> Vec<(&'static str, bool, Vec<u8>, u8, u8)> {
    let mut bad_marker = msg(4, &[]);
    bad_marker[3] = 0;
    let mut huge = msg(2, &[0, 0, 0, 0]);
    huge[16..18].copy_from_slice(&4097u16.to_be_bytes());
    let mut short = msg(4, &[]);
    short[16..18].copy_from_slice(&18u16.to_be_bytes());
    vec![
        ("marker not all ones", true, bad_marker, 1, 1),
        ("length below 19", true, short, 1, 2),
        ("length above 4096", true, huge, 1, 2),
        ("KEEPALIVE with a body", true, msg(4, &[0]), 1, 2),
        ("unknown message type", true, msg(9, &[]), 1, 3),
        ("OPEN version 3", false, msg(1, &open_body(3, PEER_AS, 90, [2, 2, 2, 2], &[])), 2, 1),
        ("OPEN wrong peer AS", false, msg(1, &open_body(4, 65099, 90, [2, 2, 2, 2], &[])), 2, 2),
        ("OPEN zero BGP identifier", false, msg(1, &open_body(4, PEER_AS, 90, [0, 0, 0, 0], &[])), 2, 3),
        (
            "OPEN unsupported optional parameter",
            false,
            msg(1, &open_body(4, PEER_AS, 90, [2, 2, 2, 2], &[1, 2, 0, 0])),
            2,
            4,
        ),
        ("OPEN hold time 2", false, msg(1, &open_body(4, PEER_AS, 2, [2, 2, 2, 2], &[])), 2, 6),
        ("UPDATE withdrawn length overruns", true, msg(2, &[0, 50, 0, 0]), 3, 1),
        ("UPDATE unrecognized well-known attribute", true, update(&[], &[0x40, 99, 1, 0], &[]), 3, 2),
        ("UPDATE MP_REACH_NLRI with transitive flag", true, update(&[], &[0xc0, 14, 5, 0, 1, 1, 4, 1], &[]), 3, 4),
        ("UPDATE truncated MP_REACH_NLRI", true, update(&[], &[0x80, 14, 3, 0, 1, 1], &[]), 3, 9),
        (
            "UPDATE repeated MP_UNREACH_NLRI",
            true,
            update(&[], &[0x80, 15, 3, 0, 1, 1, 0x80, 15, 3, 0, 1, 1], &[]),
            3,
            1,
        ),
        ("UPDATE NLRI prefix length 33", true, update(&[], &GOOD_ATTRS, &[33, 10, 0, 0, 0, 0]), 3, 10),
        ("UPDATE in OpenSent", false, update(&[], &[], &[]), 5, 1),
        ("OPEN in Established", true, good_open(), 5, 3),
        ("ROUTE-REFRESH of 24 octets", true, msg(5, &[0, 1, 0, 1, 0]), 7, 1),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_the_right_notification() {
    let mut failures = Vec::new();
    for (i, (name, est, bytes, code, sub)) in cases().into_iter().enumerate() {
        let (sp, addr, me) = speaker(100 + i as u8).await;
        let mut s = connect(addr, me).await;
        if est {
            establish(&mut s).await;
            let end = tokio::time::Instant::now() + Duration::from_secs(5);
            while sp.peers()[0].state != State::Established && tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(sp.peers()[0].state, State::Established, "{name}: setup");
        }
        s.write_all(&bytes).await.unwrap();
        let got = read_notification(&mut s).await;
        eprintln!("{name}: expected {code}/{sub}, got {got:?}");
        if got != Some((code, sub)) {
            failures.push(format!("{name}: expected {code}/{sub}, got {got:?}"));
        }
        // The speaker records the error right after sending the NOTIFICATION.
        let end = tokio::time::Instant::now() + Duration::from_secs(3);
        while sp.peers()[0].last_error.is_none() && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = sp.peers()[0].last_error.clone();
        drop(sp);
        if got == Some((code, sub)) && err.is_none() {
            failures.push(format!("{name}: no last_error recorded"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_attributes_are_treated_as_withdraw() {
    let (sp, addr, me) = speaker(99).await;
    let mut s = connect(addr, me).await;
    establish(&mut s).await;
    // 10.99.0.0/16 with good attributes, then again with ORIGIN value 7.
    s.write_all(&update(&[], &GOOD_ATTRS, &[16, 10, 99])).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while sp.loc_rib_len(Family::Ipv4Unicast) != 1 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sp.loc_rib_len(Family::Ipv4Unicast), 1);
    let mut bad = GOOD_ATTRS;
    bad[3] = 7;
    s.write_all(&update(&[], &bad, &[16, 10, 99])).await.unwrap();
    // Missing NEXT_HOP for another prefix: also treat-as-withdraw.
    s.write_all(&update(&[], &GOOD_ATTRS[..13], &[16, 10, 98])).await.unwrap();
    s.write_all(&msg(4, &[])).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while sp.loc_rib_len(Family::Ipv4Unicast) != 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sp.loc_rib_len(Family::Ipv4Unicast), 0);
    // The session survives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sp.peers()[0].state, State::Established);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), read_notification(&mut s)).await.is_err(),
        "no NOTIFICATION for treat-as-withdraw errors"
    );
}
