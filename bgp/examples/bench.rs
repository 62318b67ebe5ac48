//! `make bench-bgp`: UPDATE processing rate and peak RSS of Tabby's example speaker, BIRD 2 and
//! GoBGP receiving the same IPv4 feed from the `inject` example, in network namespaces.
//!
//! Usage: `bench [COUNT...]` (default 100000 1000000). Needs root, bird2 and gobgpd.

#[path = "../tests/support/mod.rs"]
#[allow(dead_code, clippy::all)]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

const RX_AS: u32 = 65000;
const TX_AS: u32 = 65001;

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Result {
    secs: f64,
    rss_kib: u64,
}

enum Receiver {
    Tabby(Tabby),
    Bird(Bird),
    GoBgp(GoBgp),
}

impl Receiver {
    fn pid(&self) -> u32 {
        match self {
            Receiver::Tabby(t) => t.proc.child.id(),
            Receiver::Bird(b) => b.proc.child.id(),
            Receiver::GoBgp(g) => g.proc.child.id(),
        }
    }

    fn count(&self) -> usize {
        match self {
            Receiver::Tabby(t) => t
                .lines
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|l| l.starts_with("count "))
                .and_then(|l| l.split_whitespace().nth(1)?.strip_prefix("v4=")?.parse().ok())
                .unwrap_or(0),
            Receiver::Bird(b) => {
                // "1000000 of 1000000 routes for 1000000 networks in table master4"
                let out = b.cli("show route count");
                out.lines()
                    .find(|l| l.contains("routes for"))
                    .and_then(|l| l.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            }
            Receiver::GoBgp(g) => {
                let out = g.cli(&["global", "rib", "summary", "-a", "ipv4"]);
                // "Destination: 10000, Path: 10000"
                out.lines()
                    .find_map(|l| l.strip_prefix("Destination: "))
                    .and_then(|l| l.split(',').next()?.trim().parse().ok())
                    .unwrap_or(0)
            }
        }
    }
}

fn run_one(name: &str, count: u32) -> Option<Result> {
    let rx = Netns::new("x");
    let tx = Netns::new("i");
    link(&rx, &["10.79.0.1/24"], &tx, &["10.79.0.2/24"]);
    let receiver = match name {
        "tabby" => Receiver::Tabby(Tabby::start(
            &rx,
            &format!(
                r#"{{"router_id": "10.79.0.1", "asn": {RX_AS}, "listen": "10.79.0.1:179", "hold_time": 240,
                    "peers": [{{"address": "10.79.0.2", "asn": {TX_AS}, "passive": true, "families": ["ipv4"]}}],
                    "print_routes": false, "count_interval_ms": 20}}"#
            ),
        )),
        "bird" => Receiver::Bird(Bird::start(
            &rx,
            &format!(
                "router id 10.79.0.1;\nlog stderr {{ warning, error, fatal }};\nprotocol device {{ }}\n\
                 protocol bgp inj {{ local 10.79.0.1 as {RX_AS}; neighbor 10.79.0.2 as {TX_AS}; passive; hold time 240;\n\
                 ipv4 {{ import all; export none; }}; }}\n"
            ),
        )),
        _ => Receiver::GoBgp(GoBgp::start(
            &rx,
            &format!(
                "[global.config]\n  as = {RX_AS}\n  router-id = \"10.79.0.1\"\n  local-address-list = [\"10.79.0.1\"]\n\
                 [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.79.0.2\"\n    peer-as = {TX_AS}\n\
                 [neighbors.transport.config]\n    passive-mode = true\n\
                 [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv4-unicast\"\n"
            ),
        )),
    };
    std::thread::sleep(Duration::from_millis(500));
    let inject = speaker_bin().with_file_name("inject");
    let mut inj = tx
        .command(inject.to_str().unwrap())
        .args(["10.79.0.1:179", "10.79.0.2", &TX_AS.to_string(), &RX_AS.to_string(), &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("injector");
    let stdout = inj.stdout.take().unwrap();
    let start = std::sync::Arc::new(std::sync::Mutex::new(None::<u128>));
    let s2 = start.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Some(t) = l.strip_prefix("sending t_ms=") {
                *s2.lock().unwrap() = t.parse().ok();
            }
        }
    });
    let _inj = Proc { child: inj, name: "inject".into() };
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut done_at = None;
    while Instant::now() < deadline {
        if receiver.count() >= count as usize {
            done_at = Some(now_ms());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss = hwm_kib(receiver.pid());
    let t0 = *start.lock().unwrap();
    match (t0, done_at) {
        (Some(t0), Some(t1)) => Some(Result { secs: (t1.saturating_sub(t0)) as f64 / 1000.0, rss_kib: rss }),
        _ => {
            eprintln!("{name}: did not receive {count} prefixes (got {})", receiver.count());
            None
        }
    }
}

fn main() {
    if !lab_available("bench-bgp", &["bird", "birdc", "gobgpd", "gobgp"]) {
        std::process::exit(if std::env::var("CI").as_deref() == Ok("true") { 1 } else { 0 });
    }
    let counts: Vec<u32> = {
        let a: Vec<u32> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
        if a.is_empty() { vec![100_000, 1_000_000] } else { a }
    };
    let bird_v = Command::new("bird")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let gobgp_v = Command::new("gobgpd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("BGP receive benchmark: IPv4 /29 feed, 100 prefixes per UPDATE, one eBGP injector (Tabby inject example)");
    println!("receivers: tabby example speaker (release), {bird_v}, {gobgp_v}\n");
    println!(
        "{:>9} | {:<6} | {:>8} | {:>13} | {:>10} | {:>12} | {:>11}",
        "prefixes", "daemon", "time s", "prefixes/s", "peak RSS", "rate vs BIRD", "RSS vs BIRD"
    );
    println!("{}", "-".repeat(92));
    for &n in &counts {
        let mut res = Vec::new();
        for name in ["tabby", "bird", "gobgp"] {
            res.push((name, run_one(name, n)));
        }
        let bird = res
            .iter()
            .find(|(n, _)| *n == "bird")
            .and_then(|(_, r)| r.as_ref())
            .map(|r| (n as f64 / r.secs.max(0.001), r.rss_kib));
        for (name, r) in &res {
            match r {
                Some(r) => {
                    let rate = n as f64 / r.secs.max(0.001);
                    let (rr, mr) = match bird {
                        Some((br, bm)) => {
                            (format!("{:.2}x", rate / br), format!("{:.2}x", r.rss_kib as f64 / bm.max(1) as f64))
                        }
                        None => ("-".into(), "-".into()),
                    };
                    println!(
                        "{:>9} | {:<6} | {:>8.2} | {:>13.0} | {:>7.1} MiB | {:>12} | {:>11}",
                        n,
                        name,
                        r.secs,
                        rate,
                        r.rss_kib as f64 / 1024.0,
                        rr,
                        mr
                    );
                }
                None => println!("{n:>9} | {name:<6} | failed"),
            }
        }
    }
}
