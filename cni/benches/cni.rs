//! `make bench-cni`: ADD and DEL latency (p50, p99) for sequential pods and the wall time of 100 parallel
//! ADDs, for Tabby (plugin + agent with cluster-durable IPAM against a real kube-apiserver) and, in the same
//! run on the same machine, Debian's reference plugins `ptp` + `host-local` (purely local IPAM on files).
//! Each plugin wires pods inside its own node network namespace. Needs root.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SEQUENTIAL: usize = 100;
const PARALLEL: usize = 100;
const WARMUP: usize = 5;

struct Figures {
    add_p50: f64,
    add_p99: f64,
    del_p50: f64,
    del_p99: f64,
    parallel_add: f64,
    parallel_del: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs the sequential and parallel rounds for one plugin.
fn measure(tag: &str, make: &(dyn Fn(&str, usize, &Netns) -> Cni + Sync)) -> Figures {
    let node = Netns::node(&format!("{tag}-node"));
    let total = WARMUP + SEQUENTIAL + PARALLEL;
    let pods: Vec<Netns> = (0..total).map(|i| Netns::new(&format!("{tag}{i}"))).collect();
    let run = |cmd: &str, i: usize| {
        let r = make(cmd, i, &pods[i]).in_ns(&node).run();
        assert_eq!(r.code, 0, "{tag} {cmd} {i}: {}", r.stdout);
    };
    for i in 0..WARMUP {
        run("ADD", i);
        run("DEL", i);
    }
    let timed = |cmd: &str, i: usize| {
        let t = Instant::now();
        run(cmd, i);
        t.elapsed()
    };
    let mut adds: Vec<Duration> = (WARMUP..WARMUP + SEQUENTIAL).map(|i| timed("ADD", i)).collect();
    let mut dels: Vec<Duration> = (WARMUP..WARMUP + SEQUENTIAL).map(|i| timed("DEL", i)).collect();
    adds.sort();
    dels.sort();
    let wall = |cmd: &str| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for i in WARMUP + SEQUENTIAL..total {
                let run = &run;
                s.spawn(move || run(cmd, i));
            }
        });
        t.elapsed().as_secs_f64() * 1000.0
    };
    let parallel_add = wall("ADD");
    let parallel_del = wall("DEL");
    Figures {
        add_p50: percentile(&adds, 0.5),
        add_p99: percentile(&adds, 0.99),
        del_p50: percentile(&dels, 0.5),
        del_p99: percentile(&dels, 0.99),
        parallel_add,
        parallel_del,
    }
}

fn main() {
    if !require_root("bench-cni") {
        return;
    }
    let ptp = Path::new("/usr/lib/cni/ptp");
    if !ptp.exists() {
        eprintln!("bench-cni: /usr/lib/cni/ptp is missing: apt-get install containernetworking-plugins");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let Some(c) = rt.block_on(Cluster::start("bench-cni")) else {
        std::process::exit(if tabby_e2e::in_ci() { 1 } else { 0 })
    };
    c.node("node-a");
    c.pool("bench", "10.244.0.0/16", 26);
    c.cp.kubectl_ok(&["create", "namespace", "bench"]);
    // No controller-manager here: the namespace's default service account must be made by hand.
    c.cp.kubectl_ok(&["create", "serviceaccount", "default", "-n", "bench"]);
    let total = WARMUP + SEQUENTIAL + PARALLEL;
    let pods: Vec<String> = (0..total)
        .map(|i| {
            format!(
                "- {{apiVersion: v1, kind: Pod, metadata: {{name: pod-{i}, namespace: bench}}, spec: {{nodeName: node-a, containers: [{{name: c, image: pause}}]}}}}"
            )
        })
        .collect();
    c.apply(&format!("apiVersion: v1\nkind: List\nitems:\n{}\n", pods.join("\n")));
    let agent = Agent::start(&c, "node-a", &[("TABBY_LOG_SEVERITY", "info"), ("RUST_LOG", "warn")]);
    let log = c.dir.path().join("cni.log");
    let tabby_conf = {
        let mut v = conf("1.1.0", &agent.socket, &log);
        v["log_level"] = json!("info");
        v
    };
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-ref", "type": "ptp", "ipMasq": false, "mtu": 1450,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.245.0.0/16"}]],
                 "dataDir": c.dir.path().join("host-local"), "routes": [{"dst": "0.0.0.0/0"}]},
    });

    let tabby = measure("tb", &|cmd, i, pod| {
        let id = format!("tabby{i:04}");
        Cni::new(cmd, &tabby_conf, &id, &pod.path, "eth0").pod("bench", &format!("pod-{i}"), &id)
    });
    let reference = measure("rf", &|cmd, i, pod| {
        let id = format!("ref{i:04}");
        let mut x = Cni::new(cmd, &ref_conf, &id, &pod.path, "eth0").pod("bench", &format!("pod-{i}"), &id);
        x.bin = Some(ptp.into());
        x
    });
    let leftover = rt.block_on(c.allocations());
    assert!(leftover.is_empty(), "Tabby allocations left after the bench: {leftover:?}");

    println!();
    println!(
        "CNI benchmark: {SEQUENTIAL} sequential pods, {PARALLEL} parallel ADDs (ms; ratio = tabby / reference, lower is better)"
    );
    println!("{:<28} {:>10} {:>20} {:>8}", "", "tabby", "ptp + host-local", "ratio");
    let rows: [(&str, f64, f64); 6] = [
        ("ADD p50", tabby.add_p50, reference.add_p50),
        ("ADD p99", tabby.add_p99, reference.add_p99),
        ("DEL p50", tabby.del_p50, reference.del_p50),
        ("DEL p99", tabby.del_p99, reference.del_p99),
        ("100 parallel ADDs (wall)", tabby.parallel_add, reference.parallel_add),
        ("100 parallel DELs (wall)", tabby.parallel_del, reference.parallel_del),
    ];
    for (name, t, r) in rows {
        println!("{name:<28} {t:>10.2} {r:>20.2} {:>7.2}x", t / r);
    }
    println!(
        "tabby: every ADD is durable in an IPAMBlock and an IPAMHandle in kube-apiserver before it returns; \
         host-local writes local files."
    );
}
