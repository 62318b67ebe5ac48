//! `make bench-routing`: the node agent's routing, side by side with BIRD 2 in the same run.
//!
//! 1. FIB install: a GoBGP peer (its RIB loaded from a generated MRT dump) sends 10k and 100k prefixes;
//!    time from the moment the BGP session is Established (GoBGP polled back to back; the start is
//!    taken as the end of the last poll that saw it down) until the kernel of the receiver holds them
//!    all, and the receiver's peak RSS (VmHWM, read a few seconds after the FIB is complete so any late
//!    work counts) — tabby-agent (the real binary, with its control plane watches) vs BIRD 2 (bgp +
//!    kernel protocol export). Both start from the same point: session setup depends on each daemon's
//!    connect timers (BIRD waits out its start delay before it connects), so it is printed separately
//!    and not counted. The FIB is counted from `/proc/net/fib_triestat` (the main table's prefix
//!    count), which is cheap at any size, unlike formatting `/proc/net/route`.
//! 2. Throughput: pod-to-pod TCP (iperf3) across nodes as a ratio to node-to-node on the same underlay,
//!    native routing (BGP) and VXLAN.
//! 3. Scale: agent RSS with 100 nodes and 10k pods (IPAM blocks full of allocations, one IPAMHandle per
//!    pod) in the API; the agent holds the IPAM GC lease, so a cluster-wide GC pass is in the peak.
//!
//! Needs root, gobgpd, bird, iperf3 and the control plane (`make controlplane`).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tabby_testkit::nodelab::*;

const FEED_ADDR: &str = "192.168.50.100";
const BIRD_ADDR: &str = "192.168.50.50";
const FEED_AS: u32 = 65001;

/// An MRT TABLE_DUMP_V2 file with `n` IPv4 /29 prefixes from 10.128.0.0/9, next hop `nh`.
fn mrt(n: u32, nh: [u8; 4]) -> Vec<u8> {
    fn rec(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&13u16.to_be_bytes());
        out.extend_from_slice(&subtype.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut out = Vec::new();
    let mut peers = Vec::new();
    peers.extend_from_slice(&[192, 168, 50, 100]); // collector ID
    peers.extend_from_slice(&0u16.to_be_bytes()); // view name
    peers.extend_from_slice(&1u16.to_be_bytes());
    peers.push(0x02); // IPv4 address, 4-octet AS
    peers.extend_from_slice(&[192, 168, 50, 100]);
    peers.extend_from_slice(&nh);
    peers.extend_from_slice(&FEED_AS.to_be_bytes());
    rec(&mut out, 1, &peers);
    let mut attrs = vec![0x40, 1, 1, 0]; // ORIGIN IGP
    attrs.extend_from_slice(&[0x40, 2, 6, 2, 1]);
    attrs.extend_from_slice(&FEED_AS.to_be_bytes()); // AS_PATH (4-octet in MRT)
    attrs.extend_from_slice(&[0x40, 3, 4]);
    attrs.extend_from_slice(&nh); // NEXT_HOP
    for i in 0..n {
        let p = (0x0a80_0000u32 + (i << 3)).to_be_bytes();
        let mut b = Vec::new();
        b.extend_from_slice(&i.to_be_bytes());
        b.push(29);
        b.extend_from_slice(&p);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes()); // peer index
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(&attrs);
        rec(&mut out, 2, &b);
    }
    out
}

struct Feed {
    ns: Netns,
    child: Child,
    dir: std::path::PathBuf,
    /// Prefixes the GoBGP RIB holds after the injection.
    loaded: u32,
}

impl Feed {
    fn start(lab: &Lab, n: u32) -> Feed {
        let ns = Netns::new("feed");
        lab.plug(&ns, FEED_ADDR);
        let dir = lab.dir.path().join(format!("feed-{n}"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("gobgpd.toml"),
            format!("[global.config]\n  as = {FEED_AS}\n  router-id = \"{FEED_ADDR}\"\n  port = 179\n"),
        )
        .expect("conf");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "gobgpd", "-f"])
            .arg(dir.join("gobgpd.toml"))
            .args(["--api-hosts", "127.0.0.1:50051", "-l", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gobgpd");
        let mut f = Feed { ns, child, dir, loaded: 0 };
        let start = Instant::now();
        while !f.gobgp(&["global"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(20), "gobgpd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let file = f.dir.join("feed.mrt");
        std::fs::File::create(&file).and_then(|mut w| w.write_all(&mrt(n, [192, 168, 50, 100]))).expect("mrt");
        let out = f.gobgp(&["mrt", "inject", "global", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "mrt inject: {}", String::from_utf8_lossy(&out.stderr));
        // `mrt inject` loads asynchronously: wait until the RIB stops growing and use what it holds.
        let start = Instant::now();
        let mut last = (0u32, Instant::now());
        loop {
            let s = f.gobgp(&["global", "rib", "summary"]);
            let text = String::from_utf8_lossy(&s.stdout).into_owned();
            let got: u32 = text
                .split("Destination:")
                .nth(1)
                .and_then(|t| t.split(',').next())
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            if got != last.0 {
                last = (got, Instant::now());
            } else if got > 0 && (got == n || last.1.elapsed() > Duration::from_secs(3)) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(180), "gobgp RIB: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
        f.loaded = last.0;
        f
    }

    fn gobgp(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.ns.name, "gobgp"]).args(args).output().expect("gobgp")
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prefixes in the main IPv4 table of `ns`.
fn route_count(ns: &Netns) -> usize {
    ns.run(|| {
        let s = std::fs::read_to_string("/proc/thread-self/net/fib_triestat").unwrap_or_default();
        s.split("Main:")
            .nth(1)
            .and_then(|m| m.lines().find(|l| l.trim_start().starts_with("Prefixes:")))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

fn peak_rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmHWM:"), get("VmRSS:"))
}

/// Waits until `ns` holds `base + n` routes; returns when that was seen.
fn wait_fib(ns: &Netns, base: usize, n: u32, start: Instant) -> Instant {
    loop {
        if route_count(ns) >= base + n as usize {
            return Instant::now();
        }
        assert!(start.elapsed() < Duration::from_secs(600), "FIB never reached {n} routes");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls GoBGP (on its own thread) for the moment its session with `peer` is Established. Returns when
/// the last poll that still saw it down had ended: the state changed after that, so the measured
/// install time is at most one poll (one `gobgp` call, a few tens of ms) too long, never too short.
fn watch_established(feed: &Feed, peer: &str) -> std::thread::JoinHandle<Instant> {
    let ns = feed.ns.name.clone();
    let peer = peer.to_string();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut down_until = Instant::now();
        loop {
            let out = Command::new("ip").args(["netns", "exec", &ns, "gobgp", "neighbor", &peer]).output();
            let text = out.map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase()).unwrap_or_default();
            if text.contains("bgp state = established") {
                return down_until;
            }
            down_until = Instant::now();
            assert!(start.elapsed() < Duration::from_secs(300), "session with {peer} never Established");
        }
    })
}

/// One receiver's run: session setup time, install time (Established → FIB complete), peak RSS in KiB.
struct FibRun {
    setup: Duration,
    install: Duration,
    hwm: u64,
}

/// Adds the receiver as GoBGP's neighbor and measures until `n` prefixes are in `ns`'s FIB.
fn measure(feed: &Feed, ns: &Netns, peer: &str, n: u32, pid: u32) -> FibRun {
    let base = route_count(ns);
    let est = watch_established(feed, peer);
    let added = Instant::now();
    let out = feed.gobgp(&["neighbor", "add", peer, "as", "64512"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done = wait_fib(ns, base, n, added);
    let established = est.join().expect("established watcher");
    // Late work (a resync, a convergence pass) counts towards the peak too.
    std::thread::sleep(Duration::from_secs(3));
    let (hwm, _) = peak_rss_kib(pid);
    let _ = feed.gobgp(&["neighbor", "del", peer]);
    FibRun {
        setup: established.saturating_duration_since(added),
        install: done.saturating_duration_since(established),
        hwm,
    }
}

/// How the feed reaches a receiver: GoBGP (the feed) or the injector (as fast as it reads).
#[derive(Clone, Copy)]
enum Sender<'a> {
    GoBgp,
    Inject(&'a std::path::Path),
}

fn run_feed(how: Sender, feed: &Feed, ns: &Netns, peer: &str, n: u32, pid: u32) -> FibRun {
    match how {
        Sender::GoBgp => measure(feed, ns, peer, n, pid),
        Sender::Inject(bin) => measure_inject(bin, feed, ns, peer, n, pid),
    }
}

/// A child process killed when dropped (also when a measurement panics).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// The injector (`inject` example of tabby-bgp) in the feed namespace sends `n` prefixes (500 per
/// UPDATE) to `peer`; the start is its first UPDATE, written right after the session is Established.
fn measure_inject(bin: &std::path::Path, feed: &Feed, ns: &Netns, peer: &str, n: u32, pid: u32) -> FibRun {
    use std::io::BufRead;
    let base = route_count(ns);
    let added = now_ms();
    let started = Instant::now();
    // The receiver may refuse the first connections (BIRD during its start delay): try again.
    let (mut child, sending) = loop {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &feed.ns.name])
            .arg(bin)
            .args([&format!("{peer}:179"), FEED_ADDR, &FEED_AS.to_string(), "64512", &n.to_string(), "500"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("inject");
        // Read on a thread to the end: the injector must never see a closed pipe (it would die, and its
        // session with it).
        let out = child.stdout.take().expect("inject stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv().unwrap_or_default();
        if let Some(t) = first.strip_prefix("sending t_ms=").and_then(|v| v.trim().parse::<u128>().ok()) {
            break (Killed(child), t);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(started.elapsed() < Duration::from_secs(60), "the injector never got a session with {peer}");
        std::thread::sleep(Duration::from_millis(500));
    };
    while route_count(ns) < base + n as usize {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("the injector's session with {peer} ended ({st}) before the FIB was complete");
        }
        assert!(started.elapsed() < Duration::from_secs(600), "FIB never reached {n} routes");
        std::thread::sleep(Duration::from_millis(10));
    }
    let done = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    let (hwm, _) = peak_rss_kib(pid);
    drop(child);
    FibRun {
        setup: Duration::from_millis(sending.saturating_sub(added) as u64),
        install: Duration::from_millis(done.saturating_sub(sending) as u64),
        hwm,
    }
}

fn fib_tabby(lab: &mut Lab, how: Sender, feed: &Feed, n: u32) -> FibRun {
    let node = lab.node_mut("node1");
    node.kill_agent("-KILL");
    let _ = node.ns.exec(&["ip", "route", "flush", "proto", "80"]);
    node.start_agent();
    node.wait_ready();
    std::thread::sleep(Duration::from_secs(1));
    let node = lab.node("node1");
    let pid = node.agent.as_ref().map(|c| c.id()).unwrap_or(0);
    run_feed(how, feed, &node.ns, &node.addr, n, pid)
}

fn fib_bird(lab: &Lab, how: Sender, feed: &Feed, n: u32) -> FibRun {
    let ns = Netns::new("bird");
    lab.plug(&ns, BIRD_ADDR);
    // The injector does not listen, and BIRD's own attempts would reach gobgpd on the same address and
    // fail, taking the injector's session down with them.
    let passive = if matches!(how, Sender::Inject(_)) { "passive on; " } else { "" };
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = lab.dir.path().join(format!("bird-{n}-{}", RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("bird.conf"),
        format!(
            "router id {BIRD_ADDR};\nprotocol device {{}}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
             protocol bgp feed {{ local {BIRD_ADDR} as 64512; neighbor {FEED_ADDR} as {FEED_AS}; {passive}ipv4 {{ import all; export none; }}; }}\n"
        ),
    )
    .expect("bird.conf");
    let bird = Command::new("ip")
        .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bird");
    let bird = Killed(bird);
    std::thread::sleep(Duration::from_secs(1));
    let run = run_feed(how, feed, &ns, BIRD_ADDR, n, bird.0.id());
    drop(bird);
    run
}

fn iperf(server: &Netns, client: &Netns, ip: &str) -> f64 {
    let mut s = Command::new("ip")
        .args(["netns", "exec", &server.name, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = client.exec(&["iperf3", "-c", ip, "-t", "5", "-J"]);
    let _ = s.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9
}

async fn throughput(encap: &str) -> Option<(f64, f64)> {
    let mut lab = Lab::new("bench-routing throughput", 2, Underlay::Flat).await?;
    lab.pool("10.244.0.0/16", encap, false);
    let (bgp, mtu) = if encap == "Never" { ("Enabled", "1500") } else { ("Disabled", "1450") };
    lab.start_agents(&[("TABBY_BGP", bgp), ("TABBY_MTU", mtu)]);
    lab.add_pod("node1", "a");
    lab.add_pod("node2", "b");
    let b2 = lab.blocks_of("node2");
    lab.node("node1")
        .wait_routes("routes", Duration::from_secs(60), |r| b2.iter().all(|b| r.contains(&format!("{b} via"))));
    let _ = ping(&lab.pod("a").ns, &lab.pod("b").ip, 2);
    let native = iperf(&lab.node("node2").ns, &lab.node("node1").ns, &lab.node("node2").addr);
    let pods = iperf(&lab.pod("b").ns, &lab.pod("a").ns, &lab.pod("b").ip);
    Some((native, pods))
}

async fn scale() -> Option<(u64, u64)> {
    let mut lab = Lab::new("bench-routing scale", 1, Underlay::Flat).await?;
    lab.pool("10.0.0.0/14", "Never", true);
    // 100 nodes (node1 is the lab's), 10k pods spread over them, 157 full /26 blocks.
    let mut docs = String::new();
    for i in 2..=100 {
        docs += &format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node{i}\n  annotations: {{tabby.dev/IPv4Address: 192.168.{}.{}/16}}\n",
            50 + i / 250,
            i % 250 + 1
        );
    }
    let pods_total = 10_000u32;
    let per_block = 64u32;
    let blocks = pods_total.div_ceil(per_block);
    // Each block with its pods (named as the allocations say, so the garbage collector finds every one
    // and releases nothing) and one IPAMHandle per pod, as the CNI ADDs leave them.
    let mut pods = String::new();
    for b in 0..blocks {
        let node = format!("node{}", b % 100 + 1);
        let base = 0x0a00_0000u32 + 4 * 64 + b * 64; // after node1's own first blocks
        let ip = std::net::Ipv4Addr::from(base);
        let n = per_block.min(pods_total - b * per_block);
        let allocs: Vec<String> = (0..64).map(|o| if o < n { o.to_string() } else { "null".into() }).collect();
        let unalloc: Vec<String> = (n..64).map(|o| o.to_string()).collect();
        let attrs: Vec<String> = (0..n)
            .map(|o| {
                format!(
                    "{{handle_id: k8s-pod-network.c{b}x{o}, secondary: {{node: {node}, namespace: default, pod: p{b}x{o}, type: pod}}}}"
                )
            })
            .collect();
        docs += &format!(
            "---\napiVersion: tabby.dev/v1\nkind: IPAMBlock\nmetadata: {{name: {}-26}}\nspec:\n  cidr: {ip}/26\n  affinity: host:{node}\n  allocations: [{}]\n  unallocated: [{}]\n  attributes: [{}]\n",
            ip.to_string().replace('.', "-"),
            allocs.join(", "),
            unalloc.join(", "),
            attrs.join(", ")
        );
        for o in 0..n {
            docs += &format!(
                "---\napiVersion: tabby.dev/v1\nkind: IPAMHandle\nmetadata: {{name: k8s-pod-network.c{b}x{o}}}\nspec: {{handleID: k8s-pod-network.c{b}x{o}, block: {{\"{ip}/26\": 1}}}}\n"
            );
            pods += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{b}x{o}, namespace: default}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: pause}}]}}\n"
            );
        }
    }
    lab.apply(&docs);
    // The agent's IPAM watches the pods of its node.
    lab.apply(&pods);
    // As in a cluster: the garbage collector on, and this agent holds its lease (the only one).
    lab.start_agents(&[("TABBY_BGP", "Enabled"), ("TABBY_IPAM_GC", "Enabled")]);
    let log = lab.node("node1").log();
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("IPAM garbage collection pass done") {
        assert!(started.elapsed() < Duration::from_secs(120), "no GC pass within 120 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Then the settling time the agent had before (20 s from its start), and a few seconds more so any
    // late work counts.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(started.elapsed()) + Duration::from_secs(5));
    let pid = lab.node("node1").agent.as_ref().map(|c| c.id()).unwrap_or(0);
    let r = peak_rss_kib(pid);
    let routes = lab.node("node1").routes().lines().count();
    eprintln!("scale: node1 has {routes} routes");
    Some(r)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The kernel's own part of the job: `n` of the feed's prefixes put straight into a fresh namespace's FIB
/// by the agent's FIB writer (the same 64 KiB batches), with no BGP, no listener and nothing else running
/// there. Neither receiver can install faster than this.
fn kernel_alone(n: u32) -> std::time::Duration {
    use std::sync::Arc;
    use tabby_agent::routes::{Diff, Target, fib::Fib};
    let ns = Netns::new("floor");
    ns.ip(&["link", "add", "f0", "type", "veth", "peer", "name", "f1"]);
    ns.ip(&["link", "set", "f0", "up"]);
    ns.ip(&["link", "set", "f1", "up"]);
    ns.ip(&["addr", "add", "192.168.0.1/24", "dev", "f0"]);
    ns.run(move || {
        let mut fib = Fib::open().expect("netlink socket");
        let via = Arc::new(Target::Via { gw: "192.168.0.2".parse().expect("address"), dev: None, onlink: false });
        let put = (0..n)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(0x0a80_0000u32 + (i << 3));
                (ipnet::IpNet::V4(ipnet::Ipv4Net::new(a, 29).expect("prefix")), via.clone())
            })
            .collect();
        let plan = Diff { put, ..Diff::default() };
        let t = Instant::now();
        let failed = fib.apply(&plan, &Default::default());
        let took = t.elapsed();
        assert!(failed.is_empty(), "kernel refused {} routes, first {:?}", failed.len(), failed.first());
        took
    })
}

fn header() {
    println!(
        "{:>8} | {:>12} {:>10} | {:>12} {:>10} | {:>10} {:>10} | {:>16}",
        "prefixes", "tabby s", "tabby MiB", "bird s", "bird MiB", "time ×", "RSS ×", "setup s (t / b)"
    );
}

fn row(n: u32, t: &FibRun, b: &FibRun) {
    let (tt, bt) = (t.install.as_secs_f64(), b.install.as_secs_f64());
    println!(
        "{:>8} | {:>12.3} {:>10.1} | {:>12.3} {:>10.1} | {:>10.2} {:>10.2} | {:>7.2} / {:>6.2}",
        n,
        tt,
        mib(t.hwm),
        bt,
        mib(b.hwm),
        tt / bt.max(1e-3),
        t.hwm as f64 / b.hwm.max(1) as f64,
        t.setup.as_secs_f64(),
        b.setup.as_secs_f64()
    );
}

/// The `inject` example of tabby-bgp next to this bench's target directory, built if missing; `None`
/// (with a note) when it cannot be had.
fn injector() -> Option<std::path::PathBuf> {
    let release = std::env::current_exe().ok()?.parent()?.parent()?.to_path_buf();
    let bin = release.join("examples").join("inject");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let _ = Command::new(cargo).args(["build", "--release", "-p", "tabby-bgp", "--example", "inject"]).status();
    }
    if bin.exists() {
        Some(bin)
    } else {
        println!("(no injector at {}: the injector table is left out)", bin.display());
        None
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let counts: Vec<u32> = std::env::var("BENCH_ROUTING_COUNTS")
        .ok()
        .map(|s| s.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    for t in ["gobgpd", "gobgp", "bird", "iperf3"] {
        if !require_tools("bench-routing", &[t]) {
            return;
        }
    }
    // BENCH_ROUTING_ONLY=fib|iperf|scale runs one section.
    let only = std::env::var("BENCH_ROUTING_ONLY").ok();
    let wants = |section: &str| only.as_deref().is_none_or(|o| o == section);
    if wants("fib") {
        println!("== FIB install: GoBGP peer → kernel (session Established → every prefix in the FIB; peak RSS)");
        header();
        let Some(mut lab) = Lab::new("bench-routing fib", 1, Underlay::Flat).await else { return };
        lab.apply(&format!(
            "apiVersion: tabby.dev/v1\nkind: BGPPeer\nmetadata: {{name: feed}}\nspec: {{peerIP: {FEED_ADDR}, asNumber: {FEED_AS}}}\n"
        ));
        lab.pool("10.244.0.0/16", "Never", false);
        // BENCH_ROUTING_AGENT_ENV="K=V …" adds settings to the agent (allocator or runtime experiments).
        let extra = std::env::var("BENCH_ROUTING_AGENT_ENV").unwrap_or_default();
        let mut env: Vec<(&str, &str)> =
            vec![("TABBY_BGP", "Enabled"), ("TABBY_LOG_SEVERITY", "info"), ("RUST_LOG", "warn")];
        env.extend(extra.split_whitespace().filter_map(|kv| kv.split_once('=')));
        if !extra.is_empty() {
            println!("(agent environment adds: {extra})");
        }
        lab.start_agents(&env);
        let inject = injector();
        let mut fast = Vec::new();
        for &n in &counts {
            let feed = Feed::start(&lab, n);
            let loaded = feed.loaded;
            let t = fib_tabby(&mut lab, Sender::GoBgp, &feed, loaded);
            let b = fib_bird(&lab, Sender::GoBgp, &feed, loaded);
            row(loaded, &t, &b);
            if let Some(bin) = &inject {
                let how = Sender::Inject(bin);
                fast.push((n, fib_tabby(&mut lab, how, &feed, n), fib_bird(&lab, how, &feed, n)));
            }
        }
        if !fast.is_empty() {
            println!(
                "\n== FIB install, fed by tabby-bgp's injector (writes as fast as the receiver reads; from its \
                 first UPDATE, right after Established)"
            );
            header();
            for (n, t, b) in &fast {
                row(*n, t, b);
            }
            println!("\nkernel alone (the agent's FIB writer into an empty namespace, nothing else there):");
            for (n, _, b) in &fast {
                let k = kernel_alone(*n).as_secs_f64();
                println!(
                    "{n:>8} prefixes: {k:.3} s = {:.2}× BIRD's time above (0.5× BIRD would be {:.3} s)",
                    k / b.install.as_secs_f64().max(1e-3),
                    b.install.as_secs_f64() / 2.0
                );
            }
        }
    }
    if wants("iperf") {
        println!("\n== Pod-to-pod TCP throughput across nodes (iperf3, 5 s, one stream) vs node-to-node");
        for (name, encap) in [("native (BGP)", "Never"), ("VXLAN", "Always")] {
            if let Some((native, pods)) = throughput(encap).await {
                println!(
                    "{name:>14}: node-to-node {native:.2} Gbit/s, pod-to-pod {pods:.2} Gbit/s, ratio {:.3}",
                    pods / native
                );
            }
        }
    }
    if wants("scale") {
        println!("\n== Agent RSS with 100 nodes and 10k pods in the API");
        if let Some((hwm, rss)) = scale().await {
            println!("tabby-agent: RSS {:.1} MiB, peak {:.1} MiB (target < 40 MiB)", mib(rss), mib(hwm));
        }
    }
}
