//! TCP sockets with the options BGP needs: MD5 signatures (RFC 2385) and GTSM (RFC 5082).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

const TCP_MD5SIG_MAXKEYLEN: usize = 80;

/// `struct tcp_md5sig` of linux/tcp.h.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; TCP_MD5SIG_MAXKEYLEN],
}

fn setsockopt<T>(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live, properly sized value for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sets (or with `None` removes) the TCP MD5 key for segments to and from `peer`.
pub fn set_md5(fd: &impl AsRawFd, peer: IpAddr, key: Option<&str>) -> io::Result<()> {
    let key = key.unwrap_or("").as_bytes();
    if key.len() > TCP_MD5SIG_MAXKEYLEN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "MD5 key longer than 80 octets"));
    }
    // SAFETY: all-zero bytes are a valid value for this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// Enables GTSM: outgoing TTL 255 and a minimum incoming TTL of `256 - hops`.
pub fn set_gtsm(fd: &impl AsRawFd, v6: bool, hops: u8) -> io::Result<()> {
    let min: libc::c_int = 256 - libc::c_int::from(hops.max(1));
    let ttl: libc::c_int = 255;
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)?;
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &min)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)?;
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &min)
    }
}

/// Sends with TTL (hop limit) 255; on a listener this covers the SYN-ACK of GTSM peers.
pub fn set_ttl_max(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    let ttl: libc::c_int = 255;
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)
    }
}

/// Options applied to a BGP connection.
#[derive(Debug, Clone, Default)]
pub struct SockOpts {
    /// MD5 key for the peer.
    pub password: Option<String>,
    /// GTSM hop count.
    pub ttl_security: Option<u8>,
}

/// Connects to `peer`, optionally from `local`, with MD5 and GTSM set before the SYN.
pub async fn connect(peer: SocketAddr, local: Option<IpAddr>, opts: &SockOpts) -> io::Result<TcpStream> {
    let sock = if peer.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(l) = local {
        sock.bind(SocketAddr::new(l, 0))?;
    }
    if opts.password.is_some() {
        set_md5(&sock, peer.ip(), opts.password.as_deref())?;
    }
    if let Some(h) = opts.ttl_security {
        set_gtsm(&sock, peer.is_ipv6(), h)?;
    }
    let s = sock.connect(peer).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Binds a listening socket; MD5 keys for peers are added with [`set_md5`] on it. An IPv6 socket
/// is IPv6-only: IPv4 peers reach the IPv4 socket, where their MD5 keys and TTL checks are set in
/// their own family (no v4-mapped addresses).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if addr.is_ipv6() {
        let on: libc::c_int = 1;
        setsockopt(&sock, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &on)?;
    }
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}
