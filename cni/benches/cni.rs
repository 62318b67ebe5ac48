//! `make bench-cni`: ADD and DEL latency (p50, p99) for sequential pods and the wall time of 100 parallel
//! ADDs, for Tabby (plugin + agent with cluster-durable IPAM against a real kube-apiserver) and, in the same
//! run on the same machine, Debian's reference plugins `ptp` + `host-local` (purely local IPAM on files).
//! Each plugin wires pods inside its own node network namespace. Needs root.

use std::path::Path;
use std::time::Instant;

use serde_json::json;
use tabby_testkit::cluster::*;
use tabby_testkit::netns::Netns;
use tabby_testkit::skip::require_root;

const SEQUENTIAL: usize = 100;
const PARALLEL: usize = 100;
const WARMUP: usize = 5;

#[derive(Default)]
struct Figures {
    add_p50: f64,
    add_p99: f64,
    del_p50: f64,
    del_p99: f64,
    parallel_add: f64,
    parallel_del: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// One plugin under test: its node namespace and pod namespaces, and how to invoke it.
struct Subject<'a> {
    tag: &'static str,
    node: Netns,
    pods: Vec<Netns>,
    make: &'a (dyn Fn(&str, usize, &Netns) -> Cni + Sync),
}

impl<'a> Subject<'a> {
    fn new(tag: &'static str, make: &'a (dyn Fn(&str, usize, &Netns) -> Cni + Sync)) -> Self {
        let node = Netns::node(&format!("{tag}-node"));
        let pods = (0..WARMUP + SEQUENTIAL + PARALLEL).map(|i| Netns::new(&format!("{tag}{i}"))).collect();
        Subject { tag, node, pods, make }
    }

    fn run(&self, cmd: &str, i: usize) {
        let r = (self.make)(cmd, i, &self.pods[i]).in_ns(&self.node).run();
        assert_eq!(r.code, 0, "{} {cmd} {i}: {}", self.tag, r.stdout);
    }

    fn timed(&self, cmd: &str, i: usize) -> f64 {
        let t = Instant::now();
        self.run(cmd, i);
        t.elapsed().as_secs_f64() * 1000.0
    }

    /// Wall time of `cmd` for every parallel pod at once.
    fn wall(&self, cmd: &str) -> f64 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for i in WARMUP + SEQUENTIAL..WARMUP + SEQUENTIAL + PARALLEL {
                s.spawn(move || self.run(cmd, i));
            }
        });
        t.elapsed().as_secs_f64() * 1000.0
    }
}

/// Runs both plugins. Sequential pods alternate between the two (A, B, A, B...), so a change in the
/// machine's load lands on both alike; the parallel rounds run one plugin after the other.
fn measure(a: &Subject, b: &Subject) -> (Figures, Figures) {
    for i in 0..WARMUP {
        for s in [a, b] {
            s.run("ADD", i);
            s.run("DEL", i);
        }
    }
    let (mut fa, mut fb) = (Figures::default(), Figures::default());
    let seq = WARMUP..WARMUP + SEQUENTIAL;
    let (mut add_a, mut add_b, mut del_a, mut del_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in seq.clone() {
        add_a.push(a.timed("ADD", i));
        add_b.push(b.timed("ADD", i));
    }
    for i in seq {
        del_a.push(a.timed("DEL", i));
        del_b.push(b.timed("DEL", i));
    }
    (fa.add_p50, fa.add_p99) = p50_p99(add_a);
    (fb.add_p50, fb.add_p99) = p50_p99(add_b);
    (fa.del_p50, fa.del_p99) = p50_p99(del_a);
    (fb.del_p50, fb.del_p99) = p50_p99(del_b);
    for (s, f) in [(a, &mut fa), (b, &mut fb)] {
        f.parallel_add = s.wall("ADD");
        f.parallel_del = s.wall("DEL");
    }
    (fa, fb)
}

/// p50s of the plugin's own timing lines (debug level, milliseconds from the plugin's start) for the
/// sequential pods: the `N` numbers at the end of each line that contains `marker`.
fn breakdown<const N: usize>(log: &Path, marker: &str) -> Option<[f64; N]> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut cols: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    // Warm-up pods come first, then the sequential ones, then the parallel round.
    for line in text.lines().filter(|l| l.contains(marker)).skip(WARMUP).take(SEQUENTIAL) {
        let (_, timing) = line.split_once(marker)?;
        let nums: Vec<f64> =
            timing.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|w| w.parse().ok()).collect();
        if nums.len() < N {
            return None;
        }
        for (c, v) in cols.iter_mut().zip(&nums[nums.len() - N..]) {
            c.push(*v);
        }
    }
    Some(cols.map(|c| p50_p99(c).0))
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
        std::process::exit(if tabby_testkit::in_ci() { 1 } else { 0 })
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
        v["log_level"] = json!("debug");
        v
    };
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-ref", "type": "ptp", "ipMasq": false, "mtu": 1450,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.245.0.0/16"}]],
                 "dataDir": c.dir.path().join("host-local"), "routes": [{"dst": "0.0.0.0/0"}]},
    });

    let tabby_make = |cmd: &str, i: usize, pod: &Netns| {
        let id = format!("tabby{i:04}");
        Cni::new(cmd, &tabby_conf, &id, &pod.path, "eth0").pod("bench", &format!("pod-{i}"), &id)
    };
    let ref_make = |cmd: &str, i: usize, pod: &Netns| {
        let id = format!("ref{i:04}");
        let mut x = Cni::new(cmd, &ref_conf, &id, &pod.path, "eth0").pod("bench", &format!("pod-{i}"), &id);
        x.bin = Some(ptp.into());
        x
    };
    let (tabby, reference) = measure(&Subject::new("tb", &tabby_make), &Subject::new("rf", &ref_make));
    let floor = rt.block_on(block_write_floor(&c));
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
    if let Some([veth, agent, done]) = breakdown(&log, "timing: veth ready") {
        println!(
            "tabby ADD, p50 from the plugin's start: veth pair ready {veth:.2} ms, agent's durable answer \
             {agent:.2} ms, pod wired {done:.2} ms"
        );
    }
    if let Some([links, agent]) = breakdown(&log, "timing: links deleted") {
        println!("tabby DEL, p50 from the plugin's start: links deleted {links:.2} ms, agent released {agent:.2} ms");
    }
    let [empty, full] = floor;
    println!(
        "kube-apiserver alone, the write every ADD waits for (IPAMBlock replace, p50 of {FLOOR_WRITES}): \
         {empty:.2} ms for an empty /26 block, {full:.2} ms with 60 pods allocated in it"
    );
}

const FLOOR_WRITES: usize = 100;

/// p50 of kube-apiserver replacing a scratch IPAMBlock outside every pool: empty, then holding 60 pod
/// allocations with the attributes the agent writes. The floor under a durable ADD, measured in this run.
async fn block_write_floor(c: &Cluster) -> [f64; 2] {
    use kube::Api;
    use kube::api::{DeleteParams, PostParams};
    use tabby_api::ipam::{AllocationAttribute, IPAMBlock, IPAMBlockSpec};
    let api: Api<IPAMBlock> = Api::all(c.client());
    let name = "10-255-255-0-26";
    let spec = |n: usize| IPAMBlockSpec {
        cidr: "10.255.255.0/26".into(),
        affinity: None,
        allocations: (0..64).map(|i| (i < n).then_some(i as i32)).collect(),
        unallocated: (n as i32..64).collect(),
        attributes: (0..n)
            .map(|i| AllocationAttribute {
                handle_id: Some(format!("bench.floor{i:04}")),
                secondary: [("node", "node-a".to_string()), ("type", "pod".into()), ("namespace", "bench".into())]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .chain([("pod".to_string(), format!("pod-{i}"))])
                    .collect(),
            })
            .collect(),
        ..Default::default()
    };
    let mut out = [0.0; 2];
    for (slot, n) in [(0, 0), (1, 60)] {
        let mut b = IPAMBlock::new(name, spec(n));
        b = api.create(&PostParams::default(), &b).await.expect("scratch block created");
        let mut times = Vec::with_capacity(FLOOR_WRITES);
        for i in 0..FLOOR_WRITES {
            b.spec.sequence_number = i as i64 + 1;
            let t = Instant::now();
            match api.replace(name, &PostParams::default(), &b).await {
                Ok(now) => {
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                    b = now;
                }
                // Someone else (the IPAM garbage collector) wrote it: take theirs, do not count this one.
                Err(_) => b = api.get(name).await.expect("scratch block read"),
            }
        }
        out[slot] = p50_p99(times).0;
        api.delete(name, &DeleteParams::default()).await.expect("scratch block deleted");
    }
    out
}
