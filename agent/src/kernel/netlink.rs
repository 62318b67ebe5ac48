//! Raw netlink, the little every user of it here needs: a socket, send and receive, messages of a buffer
//! and their attributes. The route writer (`routes::fib`, NETLINK_ROUTE) and policy's counters
//! (`kernel::nfnl`, NETLINK_NETFILTER) speak their own messages over it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLMSG_HDR: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_DUMP: u16 = 0x300;

/// Receive buffer asked for: room for failures of a whole batch, and for event bursts.
const RCVBUF: libc::c_int = 8 << 20;

/// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`), bound to the multicast `groups`,
/// with a receive buffer large enough for a batch's failures and for event bursts.
pub fn socket(protocol: libc::c_int, groups: u32, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, flags, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_nl; the fields are set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = groups;
    // SAFETY: `sa` is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Privileged agents may exceed rmem_max; otherwise take what the system allows.
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: the option value is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
    }
    Ok(fd)
}

pub fn recv(fd: &impl AsRawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn send(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Netlink messages in a received buffer: (type, flags, seq, payload).
pub fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + NLMSG_HDR > buf.len() {
            return None;
        }
        let len = u32_at(buf, off) as usize;
        if len < NLMSG_HDR || off + len > buf.len() {
            return None;
        }
        let m = (u16_at(buf, off + 4), u16_at(buf, off + 6), u32_at(buf, off + 8), &buf[off + NLMSG_HDR..off + len]);
        off += align4(len);
        Some(m)
    })
}

/// The attributes of a payload from byte `start` on (after the family header: 12 bytes of `rtmsg`, 4 of
/// `nfgenmsg`), or of a nested attribute's value from 0: (type without the nested/byte-order flags, value).
pub fn attrs(payload: &[u8], start: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = start;
    std::iter::from_fn(move || {
        if off + 4 > payload.len() {
            return None;
        }
        let len = u16_at(payload, off) as usize;
        if len < 4 || off + len > payload.len() {
            return None;
        }
        let a = (u16_at(payload, off + 2) & 0x3fff, &payload[off + 4..off + len]);
        off += align4(len);
        Some(a)
    })
}

/// Appends attribute `kind` with `value`, padded to 4 bytes.
pub fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

/// Reads the replies to the dump request `seq` on `fd` (through `buf`), calling `each(type, payload)` for
/// every message of it, until the dump is done. An `NLMSG_ERROR` reply is returned as its errno.
pub fn dump(fd: &impl AsRawFd, buf: &mut [u8], seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    loop {
        let n = recv(fd, buf, 0)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "netlink dump ended early"));
        }
        for (kind, flags, mseq, p) in messages(&buf[..n]) {
            if mseq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = if p.len() >= 4 { -(u32_at(p, 0) as i32) } else { libc::EIO };
                    return Err(io::Error::from_raw_os_error(errno));
                }
                _ => each(kind, p),
            }
            if flags & NLM_F_MULTI == 0 {
                return Ok(());
            }
        }
    }
}
