//! What one change costs at scale, inside one agent (`make bench-policy-scale`, root; `make bench-policy`
//! measures the same on real nodes beside kube-router): 1,000 Kubernetes NetworkPolicies, 10,000 pods on
//! 100 nodes (100 on this one), programmed into a real kernel's nftables in a network namespace; then one
//! remote pod relabelled and one policy edited. Prints the compile+render time, the batch sizes and the
//! `nft` apply times, and checks that a label change is set elements only and a policy edit one chain.
//! Then the reconciler's own pass for a remote relabel (a patch of the last compile) beside the full
//! build, compile and render it replaces, and the memory of each part.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use tabby_agent::kernel::nft::{Change, Nft, plan};
use tabby_agent::policy::render::render;
use tabby_api::pod::LeanPod;
use tabby_api::policy::model::{self, Cluster, Endpoint, compile};
use tabby_testkit::netns::Netns;
use tabby_testkit::skip::require_root;

/// Counts the bytes allocated, less those freed, while [`ON`] (only around the pass it measures, so the
/// bench's timings elsewhere pay one relaxed load per allocation), and the most since [`peak_reset`]: what a
/// pass holds at its height, which the RSS after a trim does not show.
struct Counting;
static ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static NOW: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);
static PEAK: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

fn counted(delta: isize) {
    use std::sync::atomic::Ordering::Relaxed;
    if ON.load(Relaxed) {
        PEAK.fetch_max(NOW.fetch_add(delta, Relaxed) + delta, Relaxed);
    }
}

// SAFETY: every call goes to the system allocator with the caller's layout; only counters are added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        counted(l.size() as isize);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        counted(-(l.size() as isize));
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        counted(new as isize - l.size() as isize);
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Starts counting (or goes on), and resets the peak to the bytes counted now (MiB).
fn peak_reset() -> f64 {
    use std::sync::atomic::Ordering::Relaxed;
    ON.store(true, Relaxed);
    let now = NOW.load(Relaxed);
    PEAK.store(now, Relaxed);
    now as f64 / 1048576.0
}

/// Stops counting (what is counted stays).
fn stop_counting() {
    ON.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The bytes counted now and the peak since [`peak_reset`] (MiB).
fn counts() -> (f64, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    (NOW.load(Relaxed) as f64 / 1048576.0, PEAK.load(Relaxed) as f64 / 1048576.0)
}

/// Kubernetes NetworkPolicy `name` of namespace `bench`: pods labelled `app` take `port` from role
/// client-0 only.
fn client_0_to(name: &str, app: &str, port: u16) -> model::Policy {
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"podSelector": {"matchLabels": {"app": app}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client-0"}}}], "ports": [{"port": port}]}]}}))
    .unwrap();
    model::from_kubernetes(&np).unwrap()
}

fn cluster(policies: usize, pods: usize, nodes: usize) -> Cluster {
    let mut c = Cluster { tiers: model::builtin_tiers(), ..Cluster::default() };
    for i in 0..pods {
        let app = format!("app-{}", i % policies);
        let role = format!("client-{}", (i / 7) % policies);
        c.endpoints.push(Arc::new(Endpoint {
            namespace: "bench".into(),
            name: format!("pod-{i}"),
            node: format!("node-{}", i % nodes),
            labels: [("app".to_string(), app), ("role".to_string(), role)].into(),
            service_account: Some("default".into()),
            ips: vec![format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256).parse().unwrap()],
            ports: vec![],
            ..Endpoint::default()
        }));
    }
    c.namespaces = [("bench".to_string(), BTreeMap::new())].into();
    for p in 0..policies {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("np-{p}"), "namespace": "bench"},
            "spec": {"podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "In", "values": [format!("app-{p}"), "shared"]}]},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client-{p}")}}}],
                                  "ports": [{"port": 80}]}]}}))
        .unwrap();
        c.policies.push(model::from_kubernetes(&np).unwrap());
    }
    c
}

/// A `/proc/self/status` figure in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn rss_kib() -> f64 {
    status_kib("VmRSS:")
}

/// This process's resident and peak memory, MiB (what the pipeline costs beside the caches).
fn memory() -> String {
    format!("RSS {:.1} MiB, peak {:.1} MiB", rss_kib() / 1024.0, status_kib("VmHWM:") / 1024.0)
}

/// The interfaces of node-0's endpoints.
fn ifaces(c: &Cluster) -> BTreeMap<String, String> {
    c.endpoints.iter().filter(|e| e.node == "node-0").map(|e| (e.key(), tabby_agent::policy::iface(e))).collect()
}

fn rendered(c: &Cluster) -> tabby_agent::policy::render::Rendered {
    render(&compile(c, |e| e.node == "node-0"), &ifaces(c))
}

fn main() {
    if !require_root("bench-policy-scale") {
        return;
    }
    one_change_at_scale();
    pass_breakdown();
}

fn one_change_at_scale() {
    let ns = Netns::new("pscale");
    // What a pass reads before compiling: 10,000 pods and 1,000 policies into the model.
    let pod_json = |i: usize| {
        json!({
            "metadata": {"name": format!("pod-{i}"), "namespace": "bench",
                         "labels": {"app": format!("app-{}", i % 1000), "role": format!("client-{}", (i / 7) % 1000)}},
            "spec": {"nodeName": format!("node-{}", i % 100), "containers": [{"name": "c", "image": "pause"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)}]}
        })
    };
    // The agent's pod cache as LeanPod, and (measured after it, so freed pages are not reused) as
    // k8s-openapi's Pod, what it held until this version.
    let before = rss_kib();
    let pods: Vec<LeanPod> = (0..10_000)
        .map(|i| {
            let mut p: LeanPod = serde_json::from_value(pod_json(i)).unwrap();
            tabby_agent::facts::lean_pod(&mut p);
            p
        })
        .collect();
    let as_lean = (rss_kib() - before) / 1024.0;
    let before = rss_kib();
    let full: Vec<Arc<k8s_openapi::api::core::v1::Pod>> =
        (0..10_000).map(|i| Arc::new(serde_json::from_value(pod_json(i)).unwrap())).collect();
    println!(
        "10000 pods cached: {as_lean:.1} MiB as LeanPod ({} bytes of struct), {:.1} MiB as Pod ({} bytes of struct before any field)",
        std::mem::size_of::<LeanPod>(),
        (rss_kib() - before) / 1024.0,
        std::mem::size_of::<k8s_openapi::api::core::v1::Pod>()
    );
    drop(full);
    let nps: Vec<k8s_openapi::api::networking::v1::NetworkPolicy> = (0..1000)
        .map(|p| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("np-{p}"), "namespace": "bench"},
                "spec": {"podSelector": {"matchExpressions": [
                            {"key": "app", "operator": "In", "values": [format!("app-{p}"), "shared"]}]},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client-{p}")}}}],
                                      "ports": [{"port": 80}]}]}}))
            .unwrap()
        })
        .collect();
    let objects = tabby_api::policy::cluster::Objects {
        pods: pods.iter().collect(),
        k8s: nps.iter().collect(),
        ..Default::default()
    };
    println!("  the pod and policy objects: {}", memory());
    let t = Instant::now();
    let built = tabby_api::policy::cluster::build(&objects, &[]);
    println!(
        "build the model from 10000 Pod objects and 1000 policies: {:?} ({} endpoints)",
        t.elapsed(),
        built.cluster.endpoints.len()
    );
    println!("  and the model built from them: {}", memory());
    drop(built);
    // The agent's way: the Pods that did not change since the last build keep their endpoints.
    let mut cache = tabby_api::policy::cluster::EndpointCache::default();
    let _ = tabby_api::policy::cluster::build_with(&objects, &[], &mut cache);
    let t = Instant::now();
    let again = tabby_api::policy::cluster::build_with(&objects, &[], &mut cache);
    println!("  again with the endpoints of unchanged Pods kept: {:?}", t.elapsed());
    drop(again);
    let c = cluster(1000, 10_000, 100);
    let t = Instant::now();
    let r = rendered(&c);
    let full = t.elapsed();
    println!(
        "compile + render, 1000 policies, 10000 pods (100 local): {:?}; {} chains, {} sets",
        full,
        r.chains.len(),
        r.sets.len()
    );
    // The bench's worst case: one local pod that every policy selects (1,000 peer sets to fill).
    let mut shared = c.clone();
    Arc::make_mut(&mut shared.endpoints[0]).labels.insert("app".into(), "shared".into());
    let t = Instant::now();
    let rs = rendered(&shared);
    println!(
        "compile + render, one local pod selected by all 1000 policies: {:?}; {} chains, {} sets",
        t.elapsed(),
        rs.chains.len(),
        rs.sets.len()
    );
    let t = Instant::now();
    let compiled = compile(&shared, |e| e.node == "node-0");
    println!(
        "  of which the compile: {:?} ({} policies, {} sets)",
        t.elapsed(),
        compiled.policies.len(),
        compiled.sets.len()
    );
    let mut again = shared.clone();
    Arc::make_mut(&mut again.endpoints[8]).labels.insert("role".into(), "client-0".into());
    let t = Instant::now();
    let _ = rendered(&again);
    println!("  then one remote label change: compile + render {:?}", t.elapsed());
    // A policy created there (it selects the shared pod, so it joins that pod's tier of 1,000).
    let mut created = shared.clone();
    created.policies.push(client_0_to("np-5000", "shared", 8443));
    let big3 = rendered(&created);
    let (big, big2) = (rs, rendered(&again));
    let result = ns.run(move || {
        // The bench's worst node: one pod under all 1,000 policies (1,027 chains, 2,002 sets).
        let mut n = Nft::default();
        n.stage(big.section());
        let t = Instant::now();
        let changes = n.commit().expect("first commit");
        println!("first program, one pod under 1000 policies: {changes} changes in {:?}", t.elapsed());
        // What policy's counters cost on that table: the netlink dump the agent reads, beside `nft`'s
        // listing it read before (the floor is the dump).
        let t = Instant::now();
        let mut counted = 0;
        tabby_agent::kernel::nfnl::rule_counters("tabby", |c| counted += usize::from(c.comment.is_some()))
            .expect("rule counters");
        let dump = t.elapsed();
        let t = Instant::now();
        let listed = std::process::Command::new("nft").args(["-j", "-t", "list", "table", "inet", "tabby"]).output();
        let nft_list = t.elapsed();
        assert!(listed.is_ok_and(|o| o.status.success()));
        assert!(counted > 2000, "every counted rule is read: {counted}");
        println!(
            "  its {counted} counted rules read: netlink dump {dump:?}, `nft -j -t list table` {nft_list:?} ({:.3}x)",
            dump.as_secs_f64() / nft_list.as_secs_f64()
        );
        for (i, r) in [&big2, &big, &big2, &big].into_iter().enumerate() {
            n.stage(r.section());
            let t = Instant::now();
            let changes = n.commit().expect("label change");
            println!("  a remote label change {i} there: {changes} changes, commit with nft {:?}", t.elapsed());
        }
        // A policy created and deleted under the 1,000: its chunk and the chunks above it, not the tier.
        for (what, r) in [("created", &big3), ("deleted", &big)] {
            n.stage(r.section());
            let t = Instant::now();
            let changes = n.commit().expect("policy created");
            println!("  a policy {what} there: {changes} changes, commit with nft {:?}", t.elapsed());
            assert!(changes < 200, "its chunks, not the tier: {changes}");
        }
        n.teardown(tabby_agent::policy::render::OWNER).expect("teardown");
        let nft = Arc::new(Mutex::new(Nft::default()));
        let mut n = nft.lock().unwrap();
        n.stage(r.section());
        let t = Instant::now();
        let changes = n.commit().expect("first commit");
        println!("first program: {changes} changes in {:?}", t.elapsed());

        // A remote pod relabelled: its address joins another selector's set.
        let mut relabelled = c.clone();
        // pod-8 runs on node-8 as role client-1; client-0 is a peer of a policy of this node's pods.
        let e = relabelled.endpoints.iter_mut().find(|e| e.name == "pod-8").unwrap();
        Arc::make_mut(e).labels.insert("role".into(), "client-0".into());
        let t = Instant::now();
        let r2 = rendered(&relabelled);
        let compute = t.elapsed();
        let (before, after) = (tabby_agent::kernel::nft::after(None, &[r.section()]), [r2.section()]);
        let batch = plan(Some(&before), &after);
        assert!(
            !batch.is_empty()
                && batch.0.iter().all(|ch| matches!(ch, Change::AddElements(..) | Change::DeleteElements(..))),
            "{}",
            batch.render()
        );
        n.stage(r2.section());
        let t = Instant::now();
        let changes = n.commit().expect("label change");
        println!(
            "one label change: compute {compute:?}, {changes} changes ({} lines), nft apply {:?}",
            batch.render().lines().count(),
            t.elapsed()
        );

        // One policy edited: its chain only.
        let mut edited = relabelled.clone();
        edited.policies[0] = client_0_to("np-0", "app-0", 8080);
        let t = Instant::now();
        let r3 = rendered(&edited);
        let compute = t.elapsed();
        n.stage(r3.section());
        let t = Instant::now();
        let changes = n.commit().expect("policy edit");
        println!("one policy edit: compute {compute:?}, {changes} changes, nft apply {:?}", t.elapsed());
        assert!(changes <= 3, "flush + the policy's rules: {changes}");
        changes
    });
    assert!(result > 0);
}

/// A writer that writes nowhere (what a commit costs before `nft` runs).
struct NoKernel;

impl tabby_agent::kernel::nft::Exec for NoKernel {
    fn list(&mut self) -> Result<Option<String>, tabby_agent::kernel::nft::NftError> {
        Ok(None)
    }
    fn run(&mut self, b: &tabby_agent::kernel::nft::Batch<'_>) -> Result<(), tabby_agent::kernel::nft::NftError> {
        // Written out as to `nft`, into nothing: the text's cost counts.
        b.write_to(&mut std::io::sink()).map_err(|e| tabby_agent::kernel::nft::NftError::Spawn(e.to_string()))
    }
    fn delete_table(&mut self) -> Result<bool, tabby_agent::kernel::nft::NftError> {
        Ok(true)
    }
}

fn pass_breakdown() {
    use tabby_agent::facts::Snapshot;
    let pod = |i: usize, role: String, app: String| {
        let mut p: LeanPod = serde_json::from_value(json!({
            "metadata": {"name": format!("pod-{i}"), "namespace": "bench", "labels": {"app": app, "role": role}},
            "spec": {"nodeName": format!("node-{}", i % 100), "containers": [{"name": "c", "image": "pause"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)}]}
        }))
        .unwrap();
        tabby_agent::facts::lean_pod(&mut p);
        Arc::new(p)
    };
    tabby_agent::memory::limit_arenas();
    let trim = || {
        tabby_agent::memory::Trimmer::new(std::time::Duration::ZERO).after_pass();
        rss_kib() / 1024.0
    };
    let base = trim();
    let mut snap = Snapshot { node: "node-0".into(), ..Snapshot::default() };
    snap.pods = (0..10_000)
        .map(|i| {
            let app = if i == 0 { "shared".to_string() } else { format!("app-{}", i % 1000) };
            pod(i, format!("client-{}", (i / 7) % 1000), app)
        })
        .collect();
    snap.policy.k8s = (0..1000)
        .map(|p| {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("np-{p}"), "namespace": "bench"},
                    "spec": {"podSelector": {"matchExpressions": [
                                {"key": "app", "operator": "In", "values": [format!("app-{p}"), "shared"]}]},
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client-{p}")}}}],
                                          "ports": [{"port": 80}]}]}}))
                .unwrap(),
            )
        })
        .collect();
    let objects = trim();
    println!("memory (trimmed RSS): start {base:.1} MiB, 10000 pods + 1000 policies {objects:.1} MiB");
    let mut cache = tabby_api::policy::cluster::EndpointCache::default();
    let mut nft = Nft::new(Box::new(NoKernel));
    let w = tabby_agent::policy::want(&snap, &[], 0, &mut cache);
    nft.stage(w.rendered.section());
    nft.commit().unwrap();
    let keep = snap.clone();
    {
        let before = trim();
        // What each part holds at its height over what it keeps (the counting allocator).
        let height = |f: &mut dyn FnMut()| {
            let base = peak_reset();
            f();
            let (now, top) = counts();
            stop_counting();
            top - now.max(base)
        };
        let mut c2 = tabby_api::policy::cluster::EndpointCache::default();
        let mut built = None;
        let b = height(&mut || {
            built = Some(tabby_api::policy::cluster::build_with(&tabby_agent::policy::objects(&snap), &[], &mut c2))
        });
        let built = built.unwrap();
        let m1 = trim();
        let mut rs = None;
        let cm = height(&mut || rs = Some(compile(&built.cluster, |e| e.node == "node-0")));
        let rs = rs.unwrap();
        let m2 = trim();
        let mut r = None;
        let rn = height(&mut || r = Some(render(&rs, &ifaces(&built.cluster))));
        let r = r.unwrap();
        println!("memory: short-lived at each part's height: build {b:.1} MiB, compile {cm:.1}, render {rn:.1}");
        let m3 = trim();
        let known = tabby_agent::kernel::nft::after(None, [&r.section()]);
        let m4 = trim();
        println!(
            "memory: model +{:.1} MiB (of which policies {} parsed), ruleset +{:.1}, rendered +{:.1}, writer's state +{:.1}",
            m1 - before,
            built.cluster.policies.len(),
            m2 - m1,
            m3 - m2,
            m4 - m3
        );
        drop((built, rs, r, known, c2));
    }
    // The agent's way: its reconciler, which patches the last compile for another node's pod.
    {
        use tabby_agent::reconcile::Reconciler;
        let gate = tabby_agent::policy::gate::Gate::new("node-0", Arc::new(tokio::sync::Notify::new()), None);
        let p = tabby_agent::policy::Policy::new(
            tabby_agent::policy::writer(),
            std::time::Duration::from_secs(30),
            gate,
            None,
        );
        let local = tabby_agent::reconcile::Local::default();
        let mut s = snap.clone();
        let before = trim();
        let base = peak_reset();
        let t = Instant::now();
        let w = p.desired(&s, &local);
        println!("agent pass, first: {:?}", t.elapsed());
        let (now, height) = counts();
        let desired = (now - base, height - base);
        let mut n = Nft::new(Box::new(NoKernel));
        let staged = peak_reset();
        n.stage(w.rendered.section());
        n.commit().unwrap();
        let commit = counts().1 - staged;
        stop_counting();
        drop(w);
        println!(
            "memory: the first full pass allocates at its height {:.1} MiB over what it started with (desired: \
             {:.1} kept, {:.1} at the height; stage + commit: {:.1} more at its height)",
            desired.1.max(staged - base + commit),
            desired.0,
            desired.1,
            commit
        );
        println!("memory: the reconciler's memo and the writer's state: +{:.1} MiB", trim() - before);
        // One pass of the reconciler and its commit (without `nft`), timed; how many changes it made.
        let mut pass = |s: &Snapshot, what: &str| {
            let t = Instant::now();
            let w = p.desired(s, &local);
            let d = t.elapsed();
            let t = Instant::now();
            n.stage(w.rendered.section());
            let changes = n.commit().unwrap();
            println!("agent pass, {what}: desired {d:?}, stage+commit (no nft) {:?}, {changes} changes", t.elapsed());
            changes
        };
        for round in 0..5 {
            let role = if round % 2 == 0 { "client-0".to_string() } else { format!("client-{}", 8 / 7) };
            s.pods[8] = pod(8, role, "app-8".into());
            pass(&s, &format!("label change {round}"));
        }
        // One policy edited, then created and deleted: only it is compiled (the kept model takes it in).
        for round in 0..6 {
            let port = 8000 + round;
            let np = |name: &str| -> Arc<k8s_openapi::api::networking::v1::NetworkPolicy> {
                Arc::new(
                    serde_json::from_value(json!({
                        "metadata": {"name": name, "namespace": "bench"},
                        "spec": {"podSelector": {"matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["app-0", "shared"]}]},
                                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client-0"}}}],
                                              "ports": [{"port": port}]}]}}))
                    .unwrap(),
                )
            };
            let what = match round % 3 {
                0 => {
                    s.policy.k8s[0] = np("np-0");
                    "edited"
                }
                1 => {
                    s.policy.k8s.push(np("np-new"));
                    "created"
                }
                _ => {
                    s.policy.k8s.pop();
                    "deleted"
                }
            };
            let changes = pass(&s, &format!("a policy {what}"));
            // An edit refills its chain; a policy created or deleted also changes the chunk of the tier it
            // lands in, one chunk per level above, the tier chain and the endpoint chains it applies to.
            assert!(what != "edited" || changes <= 3, "an edit is its chain: {changes} changes");
            assert!(changes < 200, "a policy {what} is its chunks, not the tier: {changes} changes");
        }
        // A pod of this node relabelled: a full compile, with the last one (and the writer's state) in
        // place; what it holds at its height over what the agent held before it (the counting allocator).
        for round in 0..2 {
            s.pods[100] = pod(100, format!("client-{}", 5 + round), "app-100".into());
            let base = peak_reset();
            let w = p.desired(&s, &local);
            let desired = counts().1 - base;
            n.stage(w.rendered.section());
            drop(w);
            let changes = n.commit().unwrap();
            let (now, top) = counts();
            stop_counting();
            println!(
                "memory: a full pass with the last in place ({changes} changes): at its height {:.1} MiB over what \
                 the agent held before it (desired {desired:.1}), {:+.1} after it",
                top - base,
                now - base
            );
        }
    }
    for round in 0..5 {
        // pod-8 (node-8) joins client-0's set, then leaves it.
        let mut next = snap.clone();
        let role = if round % 2 == 0 { "client-0".to_string() } else { format!("client-{}", 8 / 7) };
        next.pods[8] = pod(8, role, "app-8".into());
        let t = Instant::now();
        let objects = tabby_agent::policy::objects(&next);
        let built = tabby_api::policy::cluster::build_with(&objects, &[], &mut cache);
        let build = t.elapsed();
        let t = Instant::now();
        let rs = compile(&built.cluster, |e| e.node == "node-0");
        let comp = t.elapsed();
        let t = Instant::now();
        let r = render(&rs, &ifaces(&built.cluster));
        let rend = t.elapsed();
        let t = Instant::now();
        let sec = r.section();
        let sect = t.elapsed();
        let known = tabby_agent::kernel::nft::after(None, [&sec]);
        let t = Instant::now();
        let b = plan(Some(&known), [&sec]);
        let plant = t.elapsed();
        let t = Instant::now();
        let _ = tabby_agent::kernel::nft::after(Some(&known), [&sec]);
        let aftert = t.elapsed();
        println!("  section {sect:?} plan {plant:?} ({} changes) after {aftert:?}", b.0.len());
        let t = Instant::now();
        nft.stage(r.section());
        let n = nft.commit().unwrap();
        let commit = t.elapsed();
        println!(
            "label change {round}: build {build:?}, compile {comp:?}, render {rend:?}, stage+commit (no nft) {commit:?}, {n} changes; {} chains {} sets",
            r.chains.len(),
            r.sets.len()
        );
        snap = next;
    }
    drop(keep);
}
