//! Packets of Log rules: the rule sends them to nflog group [`LOG_GROUP`] with the prefix
//! `T|<policy chain>|<rule index>`; this reads the group (nfnetlink_log, one socket) and writes one JSON
//! line per packet to the agent's log (target `tabby_agent::policy_log`): the policy, tier, rule, direction and
//! the packet's addresses, protocol and ports. Log never decides: the packet goes on to the next rule.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Attribution;
use super::render::{Attr, LOG_GROUP};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

/// What one logged packet says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub prefix: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// Source, destination, protocol, source port, destination port.
pub type Header = (IpAddr, IpAddr, u8, Option<u16>, Option<u16>);

/// The L3/L4 facts of an IP packet (pure).
pub fn packet(p: &[u8]) -> Option<Header> {
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            let a: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let b: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            (Ipv4Addr::from(a).into(), Ipv4Addr::from(b).into(), *p.get(9)?, p.get(ihl..)?)
        }
        6 => {
            let a: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let b: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into(), *p.get(6)?, p.get(40..)?)
        }
        _ => return None,
    };
    let port = |i: usize| l4.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ports = matches!(proto, 6 | 17 | 132 | 136);
    Some((src, dst, proto, ports.then(|| port(0)).flatten(), ports.then(|| port(2)).flatten()))
}

/// The attributes of one nfnetlink_log packet message (after its nfgenmsg).
fn attrs(mut b: &[u8]) -> BTreeMap<u16, Vec<u8>> {
    let mut out = BTreeMap::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.insert(ty, b[4..len].to_vec());
        b = b.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

/// The packets in one datagram of netlink messages (pure).
pub fn messages(mut buf: &[u8]) -> Vec<Logged> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        if ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET && len >= 20 {
            let a = attrs(&buf[20..len]);
            let prefix = a.get(&NFULA_PREFIX).map(|p| String::from_utf8_lossy(p).trim_end_matches('\0').to_string());
            if let (Some(prefix), Some(Some((src, dst, protocol, src_port, dst_port)))) =
                (prefix, a.get(&NFULA_PAYLOAD).map(|p| packet(p)))
            {
                out.push(Logged { prefix, src, dst, protocol, src_port, dst_port });
            }
        }
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

/// What a Log rule's prefix stands for.
pub fn attribute<'a>(prefix: &str, attribution: &'a BTreeMap<(String, u64), Attr>) -> Option<&'a Attr> {
    let mut parts = prefix.split('|');
    let (_, chain, rule) = (parts.next()?, parts.next()?, parts.next()?.parse::<usize>().ok()?);
    attribution.iter().find(|((c, _), a)| c == chain && a.rule == Some(rule) && a.action == "log").map(|(_, a)| a)
}

fn config(group: u16, attr_ty: u16, payload: &[u8], seq: u32) -> Vec<u8> {
    let alen = 4 + payload.len();
    let len = 16 + 4 + ((alen + 3) & !3);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, resource id (the group, big-endian).
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(&(alen as u16).to_ne_bytes());
    m.extend_from_slice(&attr_ty.to_ne_bytes());
    m.extend_from_slice(payload);
    m.resize(len, 0);
    m
}

/// Binds nflog group [`LOG_GROUP`] and logs its packets forever (a thread of its own: blocking reads).
pub fn spawn(attribution: Attribution) {
    std::thread::spawn(move || {
        if let Err(e) = run(&attribution) {
            tracing::warn!(error = %e, "Log rules' packets cannot be read (nfnetlink_log); their counters still count");
        }
    });
}

fn run(attribution: &Attribution) -> std::io::Result<()> {
    // SAFETY: plain socket(2)/bind(2)/send(2)/recv(2) on a descriptor this function owns.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    let sa = &addr as *const libc::sockaddr_nl as *const libc::sockaddr;
    if unsafe { libc::bind(fd, sa, std::mem::size_of::<libc::sockaddr_nl>() as u32) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut mode = 0xffffu32.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    for (i, msg) in
        [config(LOG_GROUP, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND], 1), config(LOG_GROUP, NFULA_CFG_MODE, &mode, 2)]
            .iter()
            .enumerate()
    {
        if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(std::io::Error::other(format!("nflog config {i}: {}", std::io::Error::last_os_error())));
        }
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let rendered = attribution.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for l in messages(&buf[..n as usize]) {
            let a = attribute(&l.prefix, &rendered.attribution);
            tracing::info!(
                target: "tabby_agent::policy_log",
                policy = a.map(|a| a.policy.as_str()).unwrap_or("?"),
                tier = a.map(|a| a.tier.as_str()).unwrap_or("?"),
                rule = a.and_then(|a| a.rule),
                direction = a.map(|a| a.dir.as_str()).unwrap_or("?"),
                src = %l.src,
                dst = %l.dst,
                protocol = l.protocol,
                src_port = l.src_port,
                dst_port = l.dst_port,
                "policy log"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_packet_is_read() {
        // An IPv4 TCP packet 10.0.0.2:40000 -> 10.0.0.1:80.
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
        ip.extend_from_slice(&40000u16.to_be_bytes());
        ip.extend_from_slice(&80u16.to_be_bytes());
        ip.extend_from_slice(&[0; 16]);
        let prefix = b"T|p-pi-abc|1\0".to_vec();
        let attr = |ty: u16, v: &[u8]| {
            let mut a = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            a.extend_from_slice(&ty.to_ne_bytes());
            a.extend_from_slice(v);
            a.resize((a.len() + 3) & !3, 0);
            a
        };
        let mut body = vec![2, 0, 0, 3];
        body.extend(attr(NFULA_PREFIX, &prefix));
        body.extend(attr(NFULA_PAYLOAD, &ip));
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend(body);
        let got = messages(&msg);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].prefix, "T|p-pi-abc|1");
        assert_eq!((got[0].src.to_string(), got[0].dst_port), ("10.0.0.2".to_string(), Some(80)));
        assert_eq!(got[0].protocol, 6);
    }
}
