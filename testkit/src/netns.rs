//! Named network namespaces (`ip netns`), deleted on drop, and running code or commands inside them.

use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use crate::process::{sh, unique};

/// A named network namespace with `lo` up, deleted on drop.
pub struct Netns {
    pub name: String,
    /// `/run/netns/<name>`.
    pub path: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { path: format!("/run/netns/{name}"), name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A namespace shaped like a host: an uplink `up0` (one end of a veth pair whose other end stays in
    /// the same namespace) with 192.168.100.1/24 and a default route.
    pub fn node(tag: &str) -> Netns {
        let ns = Netns::new(tag);
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        ns.ip(&["addr", "add", "192.168.100.1/24", "dev", "up0"]);
        ns.ip(&["link", "set", "up1", "up"]);
        ns.ip(&["link", "set", "up0", "up"]);
        ns.ip(&["route", "add", "default", "via", "192.168.100.254", "dev", "up0"]);
        ns
    }

    /// `prog` to be run inside the namespace.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args[0]).args(&args[1..]).output().expect("ip netns exec runs")
    }

    /// Runs a command inside the namespace: whether it succeeded, and its stdout and stderr.
    pub fn exec_text(&self, args: &[&str]) -> (bool, String) {
        let o = self.exec(args);
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    /// Runs a command inside the namespace, panicking with its output when it fails; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ip -n <name> <args>`, panicking when it fails; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        sh(&[&["ip", "-n", self.name.as_str()][..], args].concat())
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path.clone();
        std::thread::spawn(move || {
            enter(&path).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// Names of the `tby…` links in this namespace.
    pub fn tabby_links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("tby"))
            .collect()
    }

    /// Routes with Tabby's protocol number in this namespace (IPv4 and IPv6).
    pub fn tabby_routes(&self) -> String {
        format!("{}{}", self.ip(&["route", "show", "proto", "80"]), self.ip(&["-6", "route", "show", "proto", "80"]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Makes `cmd` start inside the network namespace at `path` (without `ip netns exec`, so the process
/// keeps exactly the environment `cmd` gives it).
pub fn spawn_inside(path: &str, cmd: &mut Command) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("network namespace {path}: {e}"));
    // SAFETY: setns(2) is async-signal-safe; `file` is moved in, so its descriptor stays open until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns with a valid descriptor and CLONE_NEWNET only changes this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's network namespace, to come back to after [`enter`].
pub fn current() -> std::io::Result<std::fs::File> {
    std::fs::File::open("/proc/thread-self/ns/net")
}

/// Moves the calling thread back into `ns` (from [`current`]).
pub fn enter_file(ns: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: as in `enter`.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
