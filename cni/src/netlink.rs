//! Just enough rtnetlink for the plugin, over a blocking `AF_NETLINK` socket: links (veth pairs), addresses
//! and routes, plus network namespace handles. A netlink socket stays bound to the namespace it was opened
//! in, so the plugin opens one in the host and one in the pod and never has to hop back and forth.

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const NLA_F_NESTED: u16 = 0x8000;

const IFF_UP: u32 = 0x1;
/// The main routing table.
pub const RT_TABLE_MAIN: u8 = 254;
/// Route scopes.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
/// The route protocol Tabby's routes carry (`proto tabby`; docs/cni.md).
pub use tabby_wire::RTPROT_TABBY;
/// Routes the plugin adds inside the pod are ordinary static ones.
pub const RTPROT_BOOT: u8 = 3;

const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// A failed netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("{0}: malformed netlink answer")]
    Malformed(String),
}

impl Error {
    /// The errno the kernel answered with, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => source.raw_os_error(),
            Error::Malformed(_) => None,
        }
    }
}

fn kernel(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let op = op.into();
    move |source| Error::Kernel { op, source }
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
}

impl NetNs {
    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Self> {
        Self::open_checked("/proc/thread-self/ns/net")
    }

    /// Opens `path`, failing with `InvalidInput` when it is not a network namespace.
    pub fn open_checked(path: &str) -> io::Result<Self> {
        let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: c is a valid NUL-terminated string; the returned fd is checked before use.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by open and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: statfs is plain data; fstatfs fills it for a valid fd.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open and st points to writable memory of the right type.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
        let magic = st.f_type as i64;
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a network namespace"));
        }
        Ok(NetNs { fd })
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: fd is a valid namespace fd; setns only affects the calling thread.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub mac: [u8; 6],
    pub up: bool,
    pub mtu: u32,
    /// The peer's index (veth), in the peer's namespace.
    pub link: Option<i32>,
}

/// An address of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: i32,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<i32>,
    pub protocol: u8,
    pub scope: u8,
}

/// Builds one netlink message.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]); // seq and pid, set on send
        Msg { buf }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        self.align();
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
        self
    }

    fn nest_start(&mut self, ty: u16) -> usize {
        self.align();
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn nest_end(&mut self, at: usize) {
        self.align();
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

fn ifinfomsg(family: u8, index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = family;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { libc::AF_INET as u8 } else { libc::AF_INET6 as u8 }
}

fn parse_ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// Iterates `(type, payload)` over the attributes in `b`.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((ty, data))
    })
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4).map(|s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]])).unwrap_or_default()
}

fn u32_of(b: &[u8]) -> u32 {
    b.get(..4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]])).unwrap_or_default()
}

/// A netlink route socket, bound to the namespace it was opened in.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid value (pid 0: the kernel picks one).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1, buf: vec![0; 64 * 1024] })
    }

    /// Opens a socket in `ns`, returning the thread to `back` afterwards.
    pub fn open_in(ns: &NetNs, back: &NetNs) -> io::Result<Self> {
        ns.enter()?;
        let sock = Self::open();
        back.enter()?;
        sock
    }

    /// Sends `msg` and collects the payloads of the answers (after the netlink header).
    fn exchange(&mut self, mut msg: Msg, op: &str) -> Result<Vec<Vec<u8>>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = msg.buf.len() as u32;
        msg.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        msg.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        // SAFETY: sockaddr_nl is plain data; zero means "the kernel".
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.buf.as_ptr().cast(),
                msg.buf.len(),
                0,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(kernel(op)(io::Error::last_os_error()));
        }
        let mut out = Vec::new();
        loop {
            // SAFETY: buf is a valid writable buffer of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(kernel(op)(e));
            }
            let mut b = &self.buf[..n as usize];
            while b.len() >= 16 {
                let mlen = u32_of(b) as usize;
                if mlen < 16 || mlen > b.len() {
                    return Err(Error::Malformed(op.to_string()));
                }
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32_of(&b[8..]);
                let payload = &b[16..mlen];
                b = &b[mlen.next_multiple_of(4).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_ERROR => {
                        let errno = -i32_at(payload, 0);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(kernel(op)(io::Error::from_raw_os_error(errno)));
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push(payload.to_vec());
                    }
                }
            }
        }
    }

    fn parse_link(p: &[u8]) -> Link {
        let mut link = Link { index: i32_at(p, 4), up: u32_of(&p[8.min(p.len())..]) & IFF_UP != 0, ..Link::default() };
        for (ty, data) in attrs(p.get(16..).unwrap_or_default()) {
            match ty {
                IFLA_IFNAME => {
                    link.name = String::from_utf8_lossy(data).trim_end_matches('\0').to_string();
                }
                IFLA_ADDRESS if data.len() == 6 => link.mac.copy_from_slice(data),
                IFLA_MTU => link.mtu = u32_of(data),
                IFLA_LINK => link.link = Some(i32_at(data, 0)),
                _ => {}
            }
        }
        link
    }

    /// The link named `name`, or `None`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, Error> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_ACK);
        m.bytes(&ifinfomsg(0, 0, 0, 0));
        m.attr(IFLA_IFNAME, &nul_terminated(name));
        match self.exchange(m, &format!("get link {name}")) {
            Ok(msgs) => Ok(msgs.first().map(|p| Self::parse_link(p))),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair: `name` here and `peer` in the namespace `peer_ns`, both with `mtu`, the peer
    /// with the MAC `peer_mac`.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: &NetNs,
        mtu: u32,
        peer_mac: [u8; 6],
    ) -> Result<(), Error> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        m.bytes(&ifinfomsg(0, 0, 0, 0));
        m.attr(IFLA_IFNAME, &nul_terminated(name));
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        let info = m.nest_start(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        let data = m.nest_start(IFLA_INFO_DATA);
        let p = m.nest_start(VETH_INFO_PEER);
        m.bytes(&ifinfomsg(0, 0, 0, 0));
        m.attr(IFLA_IFNAME, &nul_terminated(peer));
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        m.attr(IFLA_ADDRESS, &peer_mac);
        m.attr(IFLA_NET_NS_FD, &(peer_ns.raw_fd() as u32).to_ne_bytes());
        m.nest_end(p);
        m.nest_end(data);
        m.nest_end(info);
        self.exchange(m, &format!("create veth {name}/{peer}")).map(drop)
    }

    /// Brings a link up.
    pub fn set_up(&mut self, index: i32) -> Result<(), Error> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK);
        m.bytes(&ifinfomsg(0, index, IFF_UP, IFF_UP));
        self.exchange(m, &format!("set link {index} up")).map(drop)
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: i32, mtu: u32) -> Result<(), Error> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK);
        m.bytes(&ifinfomsg(0, index, 0, 0));
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        self.exchange(m, &format!("set link {index} mtu {mtu}")).map(drop)
    }

    /// Deletes a link (a veth takes its peer with it). `Ok(false)` when it did not exist.
    pub fn delete_link(&mut self, index: i32) -> Result<bool, Error> {
        let mut m = Msg::new(RTM_DELLINK, NLM_F_ACK);
        m.bytes(&ifinfomsg(0, index, 0, 0));
        match self.exchange(m, &format!("delete link {index}")) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `addr/prefix` to a link (IPv6 without duplicate address detection). Existing: success.
    pub fn add_addr(&mut self, index: i32, addr: IpAddr, prefix: u8) -> Result<(), Error> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
        let mut h = [0u8; 8];
        h[0] = family(&addr);
        h[1] = prefix;
        h[2] = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        m.bytes(&h);
        m.attr(IFA_LOCAL, &ip_bytes(&addr));
        m.attr(IFA_ADDRESS, &ip_bytes(&addr));
        self.exchange(m, &format!("add address {addr}/{prefix}")).map(drop)
    }

    /// The addresses of one link (or every link with `None`) of a family.
    pub fn addrs(&mut self, index: Option<i32>, v6: bool) -> Result<Vec<Addr>, Error> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_DUMP);
        let mut h = [0u8; 8];
        h[0] = if v6 { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 };
        m.bytes(&h);
        let msgs = self.exchange(m, "list addresses")?;
        let mut out = Vec::new();
        for p in msgs {
            if p.len() < 8 {
                continue;
            }
            let idx = i32_at(&p, 4);
            if index.is_some_and(|i| i != idx) {
                continue;
            }
            let mut addr = None;
            for (ty, data) in attrs(&p[8..]) {
                if ty == IFA_LOCAL || (ty == IFA_ADDRESS && addr.is_none()) {
                    addr = parse_ip(data);
                }
            }
            if let Some(addr) = addr {
                out.push(Addr { index: idx, addr, prefix: p[1] });
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a route in the main table.
    pub fn add_route(&mut self, r: &Route, v6: bool) -> Result<(), Error> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
        let mut h = [0u8; 12];
        h[0] = if v6 { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 };
        h[1] = r.dst_len;
        h[4] = RT_TABLE_MAIN;
        h[5] = r.protocol;
        h[6] = r.scope;
        h[7] = RTN_UNICAST;
        m.bytes(&h);
        if let Some(dst) = &r.dst {
            m.attr(RTA_DST, &ip_bytes(dst));
        }
        if let Some(gw) = &r.gateway {
            m.attr(RTA_GATEWAY, &ip_bytes(gw));
        }
        if let Some(oif) = r.oif {
            m.attr(RTA_OIF, &oif.to_ne_bytes());
        }
        self.exchange(m, &format!("add route {:?}/{}", r.dst, r.dst_len)).map(drop)
    }

    /// The routes of the main table of a family.
    pub fn routes(&mut self, v6: bool) -> Result<Vec<Route>, Error> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
        let mut h = [0u8; 12];
        h[0] = if v6 { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 };
        m.bytes(&h);
        let msgs = self.exchange(m, "list routes")?;
        let mut out = Vec::new();
        for p in msgs {
            if p.len() < 12 {
                continue;
            }
            let mut table = p[4] as u32;
            let mut r = Route { dst: None, dst_len: p[1], gateway: None, oif: None, protocol: p[5], scope: p[6] };
            for (ty, data) in attrs(&p[12..]) {
                match ty {
                    RTA_DST => r.dst = parse_ip(data),
                    RTA_GATEWAY => r.gateway = parse_ip(data),
                    RTA_OIF => r.oif = Some(i32_at(data, 0)),
                    RTA_TABLE => table = u32_of(data),
                    _ => {}
                }
            }
            if table == RT_TABLE_MAIN as u32 {
                out.push(r);
            }
        }
        Ok(out)
    }
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.attr(IFLA_IFNAME, b"eth0\0");
        let n = m.nest_start(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        m.nest_end(n);
        let parsed: Vec<(u16, Vec<u8>)> = attrs(&m.buf[16..]).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(parsed[0], (IFLA_IFNAME, b"eth0\0".to_vec()));
        assert_eq!(parsed[1].0, IFLA_LINKINFO);
        let inner: Vec<(u16, Vec<u8>)> = attrs(&parsed[1].1).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(inner, vec![(IFLA_INFO_KIND, b"veth".to_vec())]);
        assert_eq!(mac_string(&[0xee; 6]), "ee:ee:ee:ee:ee:ee");
    }
}
