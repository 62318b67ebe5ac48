//! Real traffic between namespaces: servers that accept TCP and echo UDP on a port (IPv4 and IPv6),
//! and clients that say whether a connection or an echo got through within a timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::netns::{self, Netns};

/// A TCP and UDP server in a namespace, stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves `port` in `ns`: TCP (writes `ok` and closes) and UDP (echoes), on every address of both
/// families.
pub fn serve(ns: &Netns, port: u16) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path.clone();
    let st = stop.clone();
    std::thread::spawn(move || {
        netns::enter(&path).expect("setns");
        let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let tcp = TcpListener::bind(any).expect("bind tcp");
        tcp.set_nonblocking(true).expect("nonblocking");
        let udp = UdpSocket::bind(any).expect("bind udp");
        udp.set_read_timeout(Some(Duration::from_millis(10))).expect("timeout");
        let _ = tx.send(());
        let mut buf = [0u8; 64];
        while !st.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"ok");
                }
                Err(_) => {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    Server { stop }
}

/// Whether a TCP connection from `from` to `ip:port` is answered within `timeout`.
pub fn tcp(from: &Netns, ip: &str, port: u16, timeout: Duration) -> bool {
    let target: IpAddr = ip.parse().expect("ip");
    from.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&(target, port).into(), timeout) else { return false };
        let _ = s.set_read_timeout(Some(timeout));
        let mut b = [0u8; 2];
        s.read_exact(&mut b).is_ok()
    })
}

/// Whether a UDP datagram from `from` to `ip:port` is echoed within `timeout`.
pub fn udp(from: &Netns, ip: &str, port: u16, timeout: Duration) -> bool {
    let target: IpAddr = ip.parse().expect("ip");
    from.run(move || {
        let bind: SocketAddr = if target.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("addr");
        let Ok(s) = UdpSocket::bind(bind) else { return false };
        let _ = s.set_read_timeout(Some(timeout));
        if s.send_to(b"hi", (target, port)).is_err() {
            return false;
        }
        let mut b = [0u8; 8];
        s.recv_from(&mut b).is_ok()
    })
}

/// Whether this kernel speaks SCTP (`socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)`).
pub fn sctp_supported() -> bool {
    // SAFETY: socket(2) and close(2) on a descriptor this function owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd >= 0 {
        unsafe { libc::close(fd) };
    }
    fd >= 0
}
