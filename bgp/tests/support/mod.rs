//! Test lab: network namespaces joined by veth pairs, BIRD 2, FRR and GoBGP daemons each with
//! their own config, sockets and pid files in a temp dir, and Tabby's example speaker. All
//! traffic stays inside namespaces created here; everything is killed and deleted on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!("{}{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::SeqCst))
}

/// Whether the lab can run: root, iproute2 and the given programs. Missing pieces fail the test
/// when `CI=true` and skip it (with a message) elsewhere.
pub fn lab_available(test: &str, programs: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for p in ["ip"].iter().chain(programs) {
        if which(p).is_none() {
            missing.push(p.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {} (install deps/apt-packages.txt, run as root)", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    // Written to the stderr handle directly: the test harness captures `eprintln!` of passing
    // tests, and a skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED {msg}");
    false
}

pub fn which(p: &str) -> Option<PathBuf> {
    if p.contains('/') {
        return Path::new(p).exists().then(|| PathBuf::from(p));
    }
    std::env::var("PATH")
        .ok()?
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/lib/frr"])
        .map(|d| Path::new(d).join(p))
        .find(|c| c.exists())
}

pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run_quiet(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// Like [`wait_until`], printing `diag()` on timeout.
pub fn wait_until_diag(what: &str, secs: u64, mut f: impl FnMut() -> bool, diag: impl FnOnce() -> String) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs}s waiting for {what}\n{}", diag());
}

/// Checks that `f` stays true for `secs`.
pub fn holds_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        assert!(f(), "{what} stopped holding");
        std::thread::sleep(Duration::from_millis(200));
    }
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

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("tbgp{tag}{}", unique());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        run(&a)
    }

    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["ip", "netns", "exec", &self.name];
        a.extend_from_slice(args);
        run_quiet(&a)
    }

    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
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

/// A child process, killed (after SIGCONT, in case it was stopped) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).output();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `args` in `ns` with stdout/stderr to `log`.
pub fn spawn(ns: &Netns, name: &str, args: &[&str], log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    let child = ns
        .command(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Proc { child, name: name.to_string() }
}

// ---------------------------------------------------------------- Tabby example speaker

/// Path of the example speaker built by `cargo test` next to the test binary.
pub fn speaker_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join("speaker");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        // `cargo test --test X` does not build examples: make sure they are current (a no-op
        // after `cargo test --workspace`, which builds them).
        let target = dir.parent().unwrap();
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(["build", "-q", "-p", "tabby-bgp", "--example", "speaker", "--example", "inject"])
            .env("CARGO_TARGET_DIR", target);
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let st = c.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
        assert!(st.success(), "building the example speaker failed");
    });
    assert!(p.exists(), "example speaker not built at {}", p.display());
    p
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
        let zebra = spawn(
            ns,
            "zebra",
            &[
                "/usr/lib/frr/zebra",
                "-f",
                zcfg.to_str().unwrap(),
                "-z",
                zsock.to_str().unwrap(),
                "--vty_socket",
                &d,
                "-i",
                &format!("{d}/zebra.pid"),
                "-u",
                "frr",
                "-g",
                "frr",
                "--log",
                "stdout",
                "-P",
                "0",
            ],
            &dir.file("zebra.out"),
        );
        wait_until("zebra socket", 10, || zsock.exists());
        let bgpd = spawn(
            ns,
            "bgpd",
            &[
                "/usr/lib/frr/bgpd",
                "-f",
                cfg.to_str().unwrap(),
                "-z",
                zsock.to_str().unwrap(),
                "--vty_socket",
                &d,
                "-i",
                &format!("{d}/bgpd.pid"),
                "-u",
                "frr",
                "-g",
                "frr",
                "--log",
                "stdout",
                "-P",
                "0",
            ],
            &dir.file("bgpd.out"),
        );
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
