//! The plugin against a real agent and control plane, in network namespaces: STATUS before and after the
//! agent is ready, ADD (ping both ways), CHECK, a chained reference plugin (portmap), DEL (twice), CHECK
//! after the pod's eth0 is gone, GC, and the bad-input table.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tabby_testkit::cluster::*;
use tabby_testkit::netns::Netns;
use tabby_testkit::process::sh;
use tabby_testkit::skip::require_root;
use tabby_wire::code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_check_del_status_gc_in_netns() {
    let _serial = serial().await;
    if !require_root("add_check_del_status_gc_in_netns") {
        return;
    }
    // No CRDs yet: the agent serves its socket but cannot sync IPAM, so STATUS says not ready.
    let Some(c) = Cluster::start_with("add_check_del_status_gc_in_netns", false).await else { return };
    c.node("node-a");
    let node = Netns::node("node");
    let log = c.dir.path().join("cni.log");
    let missing = c.dir.path().join("nobody-here.sock");
    let status = |socket: &std::path::Path| Cni::new("STATUS", &conf("1.1.0", socket, &log), "", "", "").run();

    let r = status(&missing);
    assert_eq!((r.code, r.json["code"].as_u64()), (1, Some(code::PLUGIN_NOT_AVAILABLE as u64)), "{}", r.stdout);
    // An agent that accepts and never answers (stopped, or stuck): STATUS still answers at once. The runtime
    // asks for STATUS within its own status call, which the kubelet runs every few seconds; a STATUS that waits
    // as long as an ADD may would make the kubelet report the whole runtime down instead of the network.
    let silent_path = c.dir.path().join("silent.sock");
    let _silent = std::os::unix::net::UnixListener::bind(&silent_path).expect("a socket that never answers");
    let asked = Instant::now();
    let r = status(&silent_path);
    assert_eq!(r.json["code"], code::PLUGIN_NOT_AVAILABLE, "{}", r.stdout);
    assert!(asked.elapsed() < Duration::from_secs(5), "STATUS took {:?}", asked.elapsed());
    let agent = Agent::spawn(&c, "node-a", &[("TABBY_IPAM_LEAK_GRACE_SECONDS", "3600")]);
    let start = Instant::now();
    while !agent.socket.exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = status(&agent.socket);
    assert_eq!(r.json["code"], code::PLUGIN_NOT_AVAILABLE, "agent without CRDs must not be ready: {}", r.stdout);
    assert!(r.json["details"].as_str().unwrap_or_default().contains("not ready"), "{}", r.stdout);
    c.install_crds();
    c.pool("pool-a", "10.244.0.0/16", 26);
    agent.wait_ready();
    let r = status(&agent.socket);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "STATUS once ready");

    // ADD
    let pod = Netns::new("pod");
    let cfg = conf("1.1.0", &agent.socket, &log);
    let cid = "c0ffee01";
    let add = Cni::new("ADD", &cfg, cid, &pod.path, "eth0").pod("default", "web-0", cid).in_ns(&node);
    let r = add.run();
    assert_eq!(r.code, 0, "ADD: {}\nagent: {}", r.stdout, agent.log_tail());
    let ips = result_ips(&r.json);
    assert_eq!(ips.len(), 1, "{}", r.stdout);
    let ip = ips[0].clone();
    let host_veth = tabby_wire::veth_name("default", "web-0");
    assert_eq!(r.json["cniVersion"], "1.1.0");
    assert_eq!(r.json["interfaces"][0]["name"], host_veth.as_str());
    assert_eq!(r.json["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(r.json["interfaces"][1]["sandbox"], pod.path.as_str());
    assert_eq!(r.json["ips"][0]["interface"], 1);
    assert_eq!(r.json["ips"][0]["address"], format!("{ip}/32"));
    assert_eq!(r.json["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
    let prev = r.json.clone();

    // The wiring, as the kernel shows it.
    let pod_routes = pod.ip(&["route"]);
    assert!(pod_routes.contains("default via 169.254.1.1 dev eth0"), "{pod_routes}");
    assert!(pod_routes.contains("169.254.1.1 dev eth0") && pod_routes.contains("scope link"), "{pod_routes}");
    assert!(pod.ip(&["addr", "show", "eth0"]).contains(&format!("{ip}/32")));
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1450"), "MTU from the agent");
    let host_routes = node.tabby_routes();
    assert!(host_routes.contains(&format!("{ip} dev {host_veth}")), "{host_routes}");
    assert_eq!(node.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp")]).stdout, b"1\n");

    // The host pings the pod; the pod resolves 169.254.1.1 by proxy ARP and reaches the host.
    let ping = node.exec(&["ping", "-c1", "-W2", &ip]);
    assert!(ping.status.success(), "host → pod: {}", String::from_utf8_lossy(&ping.stdout));
    let ping = pod.exec(&["ping", "-c1", "-W2", "192.168.100.1"]);
    assert!(ping.status.success(), "pod → host via 169.254.1.1: {}", String::from_utf8_lossy(&ping.stdout));
    let neigh = pod.ip(&["neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "gateway resolved by proxy ARP: {neigh}");

    // A repeated ADD for the same container is safe and returns the same address.
    let again = add.run();
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert_eq!(result_ips(&again.json), vec![ip.clone()]);

    // A real consumer of our result: Debian's portmap, chained with prevResult, in 1.0.0 (its newest
    // version) and in 0.3.1 (what Multus delegates with and many existing conflists say), which Tabby
    // answers in that version: each ip with its "version".
    let cfg10 = conf("1.0.0", &agent.socket, &log);
    let add10 = Cni::new("ADD", &cfg10, cid, &pod.path, "eth0").pod("default", "web-0", cid).in_ns(&node).run();
    assert_eq!(add10.code, 0, "{}", add10.stdout);
    let cfg031 = conf("0.3.1", &agent.socket, &log);
    let add031 = Cni::new("ADD", &cfg031, cid, &pod.path, "eth0").pod("default", "web-0", cid).in_ns(&node).run();
    assert_eq!(add031.code, 0, "{}", add031.stdout);
    assert_eq!(
        (add031.json["cniVersion"].as_str(), add031.json["ips"][0]["version"].as_str()),
        (Some("0.3.1"), Some("4"))
    );
    assert_eq!(result_ips(&add031.json), vec![ip.clone()]);
    let portmap = std::path::Path::new("/usr/lib/cni/portmap");
    if portmap.exists() {
        for (version, prev) in [("1.0.0", &add10.json), ("0.3.1", &add031.json)] {
            let pm_conf = json!({"cniVersion": version, "name": "k8s-pod-network", "type": "portmap",
                "capabilities": {"portMappings": true}, "snat": true, "prevResult": prev});
            let mut pm = Cni::new("ADD", &pm_conf, cid, &pod.path, "eth0").in_ns(&node);
            pm.bin = Some(portmap.into());
            let out = pm.run();
            assert_eq!(out.code, 0, "portmap rejected our {version} result: {}", out.stdout);
            assert_eq!(result_ips(&out.json), vec![ip.clone()], "portmap passes our result on: {}", out.stdout);
            assert_eq!(out.json["interfaces"], prev["interfaces"]);
        }
    } else if tabby_testkit::in_ci() {
        panic!("/usr/lib/cni/portmap is missing: install containernetworking-plugins");
    } else {
        eprintln!("SKIP portmap chaining: containernetworking-plugins is not installed");
    }

    // CHECK passes; STATUS; then CHECK fails with the mismatch code once eth0 is gone.
    let mut check_conf = cfg.clone();
    check_conf["prevResult"] = prev.clone();
    let check = Cni::new("CHECK", &check_conf, cid, &pod.path, "eth0").pod("default", "web-0", cid).in_ns(&node);
    let r = check.run();
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "CHECK on a healthy pod");
    sh(&["ip", "-n", &pod.name, "link", "del", "eth0"]);
    let r = check.run();
    assert_eq!(r.code, 1);
    assert_eq!(r.json["code"], code::CHECK_MISMATCH, "{}", r.stdout);
    assert!(r.json["msg"].is_string() && r.json["details"].as_str().unwrap_or_default().contains("eth0"));

    // DEL removes every trace; DEL again succeeds; DEL with the netns gone succeeds.
    let del = Cni::new("DEL", &cfg, cid, &pod.path, "eth0").pod("default", "web-0", cid).in_ns(&node);
    let r = del.run();
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "DEL");
    assert!(node.tabby_links().is_empty(), "links left: {:?}", node.tabby_links());
    assert_eq!(node.tabby_routes(), "", "routes left");
    assert!(c.allocations().await.is_empty(), "allocation left");
    assert!(c.handles().await.is_empty(), "handle left");
    assert_eq!(del.run().code, 0, "second DEL");
    let mut gone = del.clone();
    gone.env.insert("CNI_NETNS".into(), "/run/netns/does-not-exist".into());
    assert_eq!(gone.run().code, 0, "DEL after the netns is gone");

    // The log names the container on every line.
    let text = std::fs::read_to_string(&log).expect("plugin log");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" ADD ") || l.contains(" DEL ")).collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l.contains(&format!("containerID={cid}"))), "{text}");

    // GC: three pods, only one still valid.
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("gc{i}"))).collect();
    for (i, p) in pods.iter().enumerate() {
        let id = format!("gc{i}");
        let r = Cni::new("ADD", &cfg, &id, &p.path, "eth0").pod("default", &id, &id).in_ns(&node).run();
        assert_eq!(r.code, 0, "{}", r.stdout);
    }
    assert_eq!(c.allocations().await.len(), 3);
    let mut gc_conf = cfg.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "gc1", "ifname": "eth0"}]);
    let r = Cni::new("GC", &gc_conf, "", "", "").in_ns(&node).run();
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "GC");
    let left = c.allocations().await;
    assert_eq!(left.keys().collect::<Vec<_>>(), vec!["k8s-pod-network.gc1"], "GC keeps only the valid one");
    let handles: Vec<String> = c.handles().await.into_iter().map(|h| h.spec.handle_id).collect();
    assert_eq!(handles, vec!["k8s-pod-network.gc1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_spec_errors_and_leaves_nothing() {
    let _serial = serial().await;
    if !require_root("bad_input_gets_spec_errors_and_leaves_nothing") {
        return;
    }
    let Some(c) = Cluster::start("bad_input_gets_spec_errors_and_leaves_nothing").await else { return };
    c.node("node-a");
    // Four addresses in all, so the table can exhaust them.
    c.pool("tiny", "10.99.0.0/30", 30);
    c.apply("apiVersion: tabby.dev/v1\nkind: IPAMConfig\nmetadata: {name: default}\nspec: {strictAffinity: true}\n");
    let agent = Agent::start(&c, "node-a", &[]);
    let node = Netns::node("node");
    let pod = Netns::new("pod");
    let log = c.dir.path().join("cni.log");
    let cfg = conf("1.1.0", &agent.socket, &log);
    let not_netns = c.dir.path().join("plain-file");
    std::fs::write(&not_netns, b"").expect("file");
    let not_netns = not_netns.display().to_string();
    let files_before = list_files(c.dir.path());

    let base = || Cni::new("ADD", &cfg, "bad0", &pod.path, "eth0").pod("default", "bad", "bad0").in_ns(&node);
    let with_stdin = |s: &str| {
        let mut x = base();
        x.stdin = s.as_bytes().to_vec();
        x
    };
    let with_env = |k: &str, v: Option<&str>| {
        let mut x = base();
        match v {
            Some(v) => x.env.insert(k.into(), v.into()),
            None => x.env.remove(k),
        };
        x
    };
    let with_conf = |f: &dyn Fn(&mut Value)| {
        let mut v = cfg.clone();
        f(&mut v);
        let mut x = base();
        x.stdin = v.to_string().into_bytes();
        x
    };
    let cases: Vec<(&str, Cni, u32)> = vec![
        ("malformed JSON", with_stdin("{\"cniVersion\": "), code::DECODE),
        ("empty stdin", with_stdin(""), code::DECODE),
        ("JSON that is not an object", with_stdin("[1,2]"), code::DECODE),
        ("cniVersion 0.2.0", with_conf(&|v| v["cniVersion"] = json!("0.2.0")), code::INCOMPATIBLE_VERSION),
        ("cniVersion 2.0.0", with_conf(&|v| v["cniVersion"] = json!("2.0.0")), code::INCOMPATIBLE_VERSION),
        ("no network name", with_conf(&|v| v["name"] = json!("")), code::INVALID_CONFIG),
        ("MTU out of range", with_conf(&|v| v["mtu"] = json!(100)), code::INVALID_CONFIG),
        ("mtu is a string", with_conf(&|v| v["mtu"] = json!("big")), code::INVALID_CONFIG),
        ("no CNI_COMMAND", with_env("CNI_COMMAND", None), code::INVALID_ENV),
        ("unknown CNI_COMMAND", with_env("CNI_COMMAND", Some("FROB")), code::INVALID_ENV),
        ("no CNI_CONTAINERID", with_env("CNI_CONTAINERID", None), code::INVALID_ENV),
        ("bad CNI_CONTAINERID", with_env("CNI_CONTAINERID", Some("../etc")), code::INVALID_ENV),
        ("no CNI_NETNS", with_env("CNI_NETNS", None), code::INVALID_ENV),
        ("no CNI_IFNAME", with_env("CNI_IFNAME", None), code::INVALID_ENV),
        ("CNI_IFNAME too long", with_env("CNI_IFNAME", Some("eth0123456789abcdef")), code::INVALID_ENV),
        ("CNI_ARGS not KEY=VALUE", with_env("CNI_ARGS", Some("K8S_POD_NAME")), code::INVALID_ENV),
        ("netns does not exist", with_env("CNI_NETNS", Some("/run/netns/tby-no-such-ns")), code::UNKNOWN_CONTAINER),
        ("netns is a plain file", with_env("CNI_NETNS", Some(&not_netns)), code::INVALID_ENV),
        (
            "agent unreachable",
            with_conf(&|v| v["agent_socket"] = json!("/run/tabby-test-no-agent.sock")),
            code::TRY_AGAIN_LATER,
        ),
        // Fails after the allocation (the pod's loopback cannot be replaced): everything is rolled back.
        ("wiring fails after allocation", with_env("CNI_IFNAME", Some("lo")), code::NETLINK),
    ];
    assert!(cases.len() >= 12);
    for (name, cni, want) in &cases {
        let r = cni.run();
        assert_eq!(r.code, 1, "{name}: exit code; stdout {}", r.stdout);
        assert_eq!(r.json["code"].as_u64(), Some(u64::from(*want)), "{name}: {}", r.stdout);
        assert!(r.json["msg"].as_str().is_some_and(|m| !m.is_empty()), "{name}: msg: {}", r.stdout);
        assert!(r.json.get("details").is_some(), "{name}: details: {}", r.stdout);
        if *want == code::TRY_AGAIN_LATER {
            assert!(r.json["details"].as_str().unwrap_or_default().contains("no-agent.sock"), "{name}: {}", r.stdout);
        }
        assert!(node.tabby_links().is_empty(), "{name}: links left: {:?}", node.tabby_links());
        assert_eq!(node.tabby_routes(), "", "{name}: routes left");
        assert!(pod.ip(&["-o", "link"]).lines().count() == 1, "{name}: pod links: {}", pod.ip(&["link"]));
        assert!(c.allocations().await.is_empty(), "{name}: allocation left");
    }

    // Exhaustion: take all four addresses, then ADD gets the pool-exhausted code and leaves nothing.
    for i in 0..4 {
        let r = agent.add(&format!("k8s-pod-network.fill{i}")).expect("agent answers");
        assert!(r.error.is_none(), "{r:?}");
    }
    let r = base().run();
    assert_eq!(r.json["code"], code::POOL_EXHAUSTED, "{}", r.stdout);
    assert!(node.tabby_links().is_empty());
    assert_eq!(c.allocations().await.len(), 4);
    assert_eq!(list_files(c.dir.path()), files_before, "files appeared: the plugin must leave none");
}

fn list_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = p.display().to_string();
            // The agent's own files and logs change while it runs.
            if name.contains("agent-") || name.ends_with(".log") || name.contains("obj-") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_add_and_del() {
    let _serial = serial().await;
    if !require_root("dual_stack_add_and_del") {
        return;
    }
    let Some(c) = Cluster::start("dual_stack_add_and_del").await else { return };
    c.node("node-a");
    c.pool("v4", "10.244.0.0/16", 26);
    c.pool("v6", "fd00:10:244::/112", 122);
    let agent = Agent::start(&c, "node-a", &[]);
    let node = Netns::node("node");
    let pod = Netns::new("pod");
    let cfg = conf("1.0.0", &agent.socket, &c.dir.path().join("cni.log"));
    let add = Cni::new("ADD", &cfg, "ds1", &pod.path, "eth0").pod("default", "ds", "ds1").in_ns(&node).run();
    assert_eq!(add.code, 0, "{}\n{}", add.stdout, agent.log_tail());
    let ips = result_ips(&add.json);
    assert_eq!(ips.len(), 2, "{}", add.stdout);
    let v6 = ips.iter().find(|i| i.contains(':')).expect("an IPv6 address").clone();
    assert!(add.stdout.contains(&format!("{v6}/128")), "{}", add.stdout);
    let routes = pod.ip(&["-6", "route"]);
    assert!(routes.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"), "{routes}");
    assert!(node.tabby_routes().contains(&v6), "{}", node.tabby_routes());
    let ping = node.exec(&["ping", "-6", "-c1", "-W3", &v6]);
    assert!(ping.status.success(), "host → pod over IPv6: {}", String::from_utf8_lossy(&ping.stdout));
    let mut check_conf = cfg.clone();
    check_conf["prevResult"] = add.json.clone();
    let check = Cni::new("CHECK", &check_conf, "ds1", &pod.path, "eth0").pod("default", "ds", "ds1").in_ns(&node).run();
    assert_eq!(check.code, 0, "{}", check.stdout);
    let del = Cni::new("DEL", &cfg, "ds1", &pod.path, "eth0").pod("default", "ds", "ds1").in_ns(&node).run();
    assert_eq!(del.code, 0, "{}", del.stdout);
    assert_eq!(node.tabby_routes(), "");
    assert!(c.allocations().await.is_empty());
}
