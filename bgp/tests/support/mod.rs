//! Test lab: network namespaces joined by veth pairs, BIRD 2, FRR and GoBGP daemons each with
//! their own config, sockets and pid files in a temp dir, and Tabby's example speaker. All
//! traffic stays inside namespaces created here; everything is killed and deleted on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use tabby_testkit::netns::Netns;
use tabby_testkit::poll::wait;
pub use tabby_testkit::process::{Proc, run_quiet, sh as run};
use tabby_testkit::process::{next_seq, sibling_example};
pub use tabby_testkit::skip::require_lab as lab_available;

fn unique() -> String {
    format!("{}{}", std::process::id() % 100_000, next_seq())
}

/// Polls `f` until it returns true or `secs` pass.
pub fn wait_until(what: &str, secs: u64, f: impl FnMut() -> bool) {
    wait_until_diag(what, secs, f, String::new);
}

/// Like [`wait_until`], printing `diag()` on timeout.
pub fn wait_until_diag(what: &str, secs: u64, f: impl FnMut() -> bool, diag: impl FnOnce() -> String) {
    wait(what, Duration::from_secs(secs)).every(Duration::from_millis(200)).until(f, diag);
}

/// Checks that `f` stays true for `secs`.
pub fn holds_for(what: &str, secs: u64, f: impl FnMut() -> bool) {
    wait(what, Duration::from_secs(secs)).every(Duration::from_millis(200)).holds(f);
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tabby-bgp-{tag}-{}", unique()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.file(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Joins `a` and `b` with a veth pair; addresses like "10.77.1.1/24" or "fd77:1::1/64".
pub fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) {
    let u = unique();
    let (ia, ib) = (format!("va{u}"), format!("vb{u}"));
    run(&["ip", "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name]);
    for (ns, ifn, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["-6", "addr", "add", addr, "dev", ifn, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifn]);
            }
        }
        ns.ip(&["link", "set", ifn, "up"]);
    }
}

/// Adds a bridge `br0` in `ns` with the given addresses and returns a function attaching a new
/// namespace to it.
pub fn bridge(ns: &Netns, addrs: &[&str]) {
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    for a in addrs {
        ns.ip(&["addr", "add", a, "dev", "br0"]);
    }
    ns.ip(&["link", "set", "br0", "up"]);
}

/// Attaches `client` to the bridge `br0` in `hub` with the client's addresses.
pub fn attach(hub: &Netns, client: &Netns, addrs: &[&str]) {
    let u = unique();
    let (ih, ic) = (format!("vh{u}"), format!("vc{u}"));
    run(&["ip", "link", "add", &ih, "netns", &hub.name, "type", "veth", "peer", "name", &ic, "netns", &client.name]);
    hub.ip(&["link", "set", &ih, "master", "br0"]);
    hub.ip(&["link", "set", &ih, "up"]);
    for a in addrs {
        client.ip(&["addr", "add", a, "dev", &ic]);
    }
    client.ip(&["link", "set", &ic, "up"]);
}

/// Spawns `args` in `ns` with stdout/stderr to `log`.
pub fn spawn(ns: &Netns, name: &str, args: &[&str], log: &Path) -> Proc {
    let mut cmd = ns.command(args[0]);
    cmd.args(&args[1..]);
    Proc::spawn(name, cmd, log)
}

// ---------------------------------------------------------------- Tabby example speaker

/// The example speaker (built with the `inject` example, once per test process: `cargo test --test X`
/// builds no examples).
pub fn speaker_bin() -> PathBuf {
    sibling_example("tabby-bgp", "speaker", &["speaker", "inject"])
}

/// Tabby's example speaker running in a namespace, driven over stdin/stdout.
pub struct Tabby {
    pub proc: Proc,
    stdin: Mutex<ChildStdin>,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub dir: TempDir,
}

impl Tabby {
    pub fn start(ns: &Netns, config: &str) -> Tabby {
        let dir = TempDir::new("tabby");
        let cfg = dir.write("speaker.json", config);
        let mut child = ns
            .command(speaker_bin().to_str().unwrap())
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        Tabby { proc: Proc { child, name: "tabby".into() }, stdin: Mutex::new(stdin), lines, dir }
    }

    pub fn send(&self, cmd: &str) {
        let mut w = self.stdin.lock().unwrap();
        writeln!(w, "{cmd}").unwrap();
        w.flush().unwrap();
    }

    /// Latest `peer` line for `addr`.
    pub fn peer_line(&self, addr: &str) -> Option<String> {
        let pat = format!("peer {addr} ");
        self.lines.lock().unwrap().iter().rev().find(|l| l.starts_with(&pat)).cloned()
    }

    /// All output lines so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn established(&self, addr: &str) -> bool {
        self.peer_line(addr).is_some_and(|l| l.contains("state=Established"))
    }

    /// The Loc-RIB as `route` lines.
    pub fn dump(&self) -> Vec<String> {
        let start = self.lines.lock().unwrap().len();
        self.send("dump");
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            {
                let l = self.lines.lock().unwrap();
                if let Some(i) = l[start..].iter().position(|x| x == "end") {
                    return l[start..start + i].iter().filter(|x| x.starts_with("route ")).cloned().collect();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dump timed out");
    }

    /// The `route` line for `prefix`, if in the Loc-RIB.
    pub fn route(&self, prefix: &str) -> Option<String> {
        let pat = format!("route {prefix} ");
        self.dump().into_iter().find(|l| l.starts_with(&pat))
    }
}

// ---------------------------------------------------------------- BIRD 2

pub struct Bird {
    pub proc: Proc,
    pub dir: TempDir,
    ns_name: String,
}

impl Bird {
    pub fn start(ns: &Netns, config: &str) -> Bird {
        Bird::start_with(ns, config, &[])
    }

    /// Starts BIRD with extra command line arguments (e.g. `-R` after a restart).
    pub fn start_with(ns: &Netns, config: &str, extra: &[&str]) -> Bird {
        let dir = TempDir::new("bird");
        let cfg = dir.write("bird.conf", config);
        let sock = dir.file("bird.ctl");
        let pid = dir.file("bird.pid");
        let mut args =
            vec!["bird", "-f", "-c", cfg.to_str().unwrap(), "-s", sock.to_str().unwrap(), "-P", pid.to_str().unwrap()];
        args.extend_from_slice(extra);
        let proc = spawn(ns, "bird", &args, &dir.file("bird.out"));
        let b = Bird { proc, dir, ns_name: ns.name.clone() };
        wait_until("bird control socket", 10, || sock.exists());
        b
    }

    pub fn cli(&self, cmd: &str) -> String {
        let sock = self.dir.file("bird.ctl");
        let mut a = vec!["birdc", "-s", sock.to_str().unwrap()];
        a.extend(cmd.split_whitespace());
        run_quiet(&a).1
    }

    pub fn established(&self, proto: &str) -> bool {
        self.cli(&format!("show protocols {proto}")).contains("Established")
    }

    /// `show route all` output for `prefix` (empty when absent).
    pub fn route(&self, prefix: &str) -> String {
        let out = self.cli(&format!("show route {prefix} all"));
        if out.contains(prefix) { out } else { String::new() }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.file("bird.out")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------- FRR

pub struct Frr {
    pub zebra: Proc,
    pub bgpd: Proc,
    pub dir: TempDir,
}

impl Frr {
    pub fn start(ns: &Netns, config: &str) -> Frr {
        let dir = TempDir::new("frr");
        let cfg = dir.write("bgpd.conf", config);
        let zcfg = dir.write("zebra.conf", "hostname zebra\n");
        let zsock = dir.file("zserv.api");
        let d = dir.0.to_str().unwrap().to_string();
        // FRR daemons insist on a user in the frrvty group: run them as the package's frr user.
        run(&["chown", "-R", "frr:frr", &d]);
        // Both daemons: a config, the zebra socket, the vty directory and a pid file, as the frr user.
        let daemon = |name: &str, config: &std::path::Path| {
            let (bin, pid) = (format!("/usr/lib/frr/{name}"), format!("{d}/{name}.pid"));
            let (config, zsock) = (config.to_str().unwrap(), zsock.to_str().unwrap());
            let args = [&bin, "-f", config, "-z", zsock, "--vty_socket", &d, "-i", &pid, "-u", "frr", "-g", "frr"];
            spawn(ns, name, &[&args[..], &["--log", "stdout", "-P", "0"]].concat(), &dir.file(&format!("{name}.out")))
        };
        let zebra = daemon("zebra", &zcfg);
        wait_until("zebra socket", 10, || zsock.exists());
        let bgpd = daemon("bgpd", &cfg);
        let f = Frr { zebra, bgpd, dir };
        wait_until("bgpd vty socket", 10, || f.dir.file("bgpd.vty").exists());
        f
    }

    pub fn vtysh(&self, cmd: &str) -> String {
        let d = self.dir.0.to_str().unwrap().to_string();
        run_quiet(&["vtysh", "--vty_socket", &d, "-c", cmd]).1
    }

    pub fn json(&self, cmd: &str) -> serde_json::Value {
        serde_json::from_str(&self.vtysh(cmd)).unwrap_or(serde_json::Value::Null)
    }

    pub fn established(&self, peer: &str) -> bool {
        let v = self.json(&format!("show bgp neighbors {peer} json"));
        v[peer]["bgpState"] == "Established"
    }

    /// JSON of the best path of `prefix` (Null when absent).
    pub fn route(&self, prefix: &str) -> serde_json::Value {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let v = self.json(&format!("show bgp {afi} unicast {prefix} json"));
        match v["paths"].as_array() {
            Some(p) if !p.is_empty() => p[0].clone(),
            _ => serde_json::Value::Null,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.file("bgpd.out")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------- GoBGP

pub struct GoBgp {
    pub proc: Proc,
    pub dir: TempDir,
    ns_name: String,
    api: String,
}

impl GoBgp {
    pub fn start(ns: &Netns, config: &str) -> GoBgp {
        let dir = TempDir::new("gobgp");
        let cfg = dir.write("gobgpd.toml", config);
        let api = "127.0.0.1:50051".to_string();
        let proc = spawn(
            ns,
            "gobgpd",
            &["gobgpd", "-f", cfg.to_str().unwrap(), "--api-hosts", &api, "--pprof-disable", "-p"],
            &dir.file("gobgpd.out"),
        );
        let g = GoBgp { proc, dir, ns_name: ns.name.clone(), api };
        wait_until("gobgpd api", 10, || g.cli(&["global"]).contains("AS"));
        g
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.ns_name, "gobgp", "-u", "127.0.0.1", "-p", "50051"];
        a.extend_from_slice(args);
        run_quiet(&a).1
    }

    pub fn established(&self, peer: &str) -> bool {
        self.cli(&["neighbor", peer]).to_lowercase().contains("bgp state = established")
    }

    /// JSON paths of `prefix` in the global RIB (Null when absent).
    pub fn route(&self, prefix: &str) -> serde_json::Value {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let out = self.cli(&["global", "rib", "-a", afi, prefix, "-j"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        match &v[prefix] {
            serde_json::Value::Array(a) if !a.is_empty() => a[0].clone(),
            _ => serde_json::Value::Null,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.file("gobgpd.out")).unwrap_or_default()
    }
}
