//! Benchmark feed: an eBGP peer that blasts N pre-encoded IPv4 /29 prefixes (from 10.128.0.0/9)
//! at a receiver as fast as it reads, then keeps the session up with KEEPALIVEs.
//!
//! Usage: `inject PEER_IP:PORT LOCAL_IP LOCAL_AS PEER_AS COUNT [PREFIXES_PER_UPDATE]`.
//! Prints `sending t_ms=…` right before the first UPDATE and `sent t_ms=…` after the last.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tabby_bgp::codec::{self, Ctx};
use tabby_bgp::{AsPath, Capability, Family, Message, Open, Origin, PathAttrs, Prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        return Err("usage: inject PEER_IP:PORT LOCAL_IP LOCAL_AS PEER_AS COUNT [PER_UPDATE]".into());
    }
    let peer: SocketAddr = a[1].parse()?;
    let local: IpAddr = a[2].parse()?;
    let local_as: u32 = a[3].parse()?;
    let count: u32 = a[5].parse()?;
    let per: usize = a.get(6).map_or(Ok(100), |s| s.parse())?;
    let IpAddr::V4(nh) = local else { return Err("IPv4 local address needed".into()) };
    let ctx = Ctx { four_octet_as: true };

    // Pre-encode the whole feed: one distinct AS path per UPDATE.
    let prefixes: Vec<Prefix> = (0..count)
        .map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a80_0000u32 + (i << 3))), 29).ok_or("prefix"))
        .collect::<Result<_, _>>()?;
    let mut feed = Vec::with_capacity(count as usize * 6);
    for (n, chunk) in prefixes.chunks(per).enumerate() {
        let attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![local_as, 100_000 + n as u32 % 50_000, 3_000_000_000])),
            next_hop: Some(nh),
            ..PathAttrs::default()
        };
        codec::encode_routes(Some((&attrs, None)), Family::Ipv4Unicast, chunk, &ctx, &mut feed)?;
    }
    // The receiver may still be starting: retry for a while.
    let mut tries = 0;
    let mut s = loop {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(local, 0))?;
        match sock.connect(peer).await {
            Ok(s) => break s,
            Err(e) if tries < 100 => {
                tries += 1;
                eprintln!("inject: connect: {e}, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    s.set_nodelay(true)?;
    let open = Open::new(local_as, 240, nh, vec![Capability::Multiprotocol { afi: 1, safi: 1 }]);
    s.write_all(&codec::to_bytes(&Message::Open(open), &ctx)?).await?;
    let mut buf = Vec::new();
    let mut got_open = false;
    let mut hold = 240u16;
    // Wait for OPEN and KEEPALIVE.
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err("peer closed during handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut done = false;
        while let Some((m, used)) = codec::decode(&buf, &ctx)? {
            buf.drain(..used);
            match m {
                Message::Open(o) => {
                    hold = hold.min(o.hold_time);
                    got_open = true;
                    s.write_all(&codec::to_bytes(&Message::Keepalive, &ctx)?).await?;
                }
                Message::Keepalive if got_open => done = true,
                Message::Notification(n) => return Err(format!("NOTIFICATION {n}").into()),
                _ => {}
            }
        }
        if done {
            break;
        }
    }
    let (mut rd, mut wr) = s.into_split();
    // Drain whatever the receiver sends.
    tokio::spawn(async move {
        let mut sink = vec![0u8; 65536];
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    let ka = codec::to_bytes(&Message::Keepalive, &ctx)?;
    let ka_every = Duration::from_secs(u64::from(hold / 3).max(1));
    let mut last_ka = Instant::now();
    println!("sending t_ms={}", now_ms());
    for part in feed.chunks(256 * 1024) {
        // UPDATEs reset the receiver's hold timer, so no KEEPALIVE is needed while sending.
        wr.write_all(part).await?;
    }
    println!("sent t_ms={}", now_ms());
    loop {
        if last_ka.elapsed() >= ka_every {
            wr.write_all(&ka).await?;
            last_ka = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
