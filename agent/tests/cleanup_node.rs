//! `tabby-agent cleanup` leaves `ip route`, `ip link`, `nft list ruleset` and the CNI directories as they
//! were before Tabby; and an agent stopped while the Installation is being deleted cleans up by itself,
//! while one stopped for a rolling update leaves its routes in place.

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tabby_testkit::nodelab::*;

fn snapshot(n: &Node, bin: &Path, conf: &Path) -> (String, String, String, String) {
    let links = n.ns.ip(&["-br", "link"]);
    let mut names: Vec<&str> = links.lines().filter_map(|l| l.split_whitespace().next()).collect();
    names.sort();
    let ls = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v.join(",")
    };
    (n.routes(), names.join(","), n.ns.ok(&["nft", "list", "ruleset"]), format!("{} | {}", ls(bin), ls(conf)))
}

fn dirs(lab: &Lab) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let bin = lab.dir.path().join("opt-cni-bin");
    let conf = lab.dir.path().join("etc-cni-net.d");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::fs::create_dir_all(&conf).expect("conf dir");
    // Someone else's files, which must survive.
    std::fs::write(bin.join("loopback"), b"#!/bin/sh\n").expect("other plugin");
    std::fs::write(conf.join("99-loopback.conf"), b"{}").expect("other conf");
    (bin, conf, lab.dir.path().join("rt_protos.d-tabby.conf"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_leaves_the_node_as_before() {
    let _g = serial();
    let Some(mut lab) = Lab::new("cleanup_leaves_the_node_as_before", 2, Underlay::Flat).await else { return };
    if !require_tools("cleanup", &["nft"]) {
        return;
    }
    let (bin, conf, protos) = dirs(&lab);
    let env: Vec<(&str, String)> = vec![
        ("TABBY_CNI_BIN_DIR", bin.display().to_string()),
        ("TABBY_CNI_CONF_DIR", conf.display().to_string()),
        ("TABBY_RT_PROTOS_FILE", protos.display().to_string()),
    ];
    let before = snapshot(lab.node("node1"), &bin, &conf);
    // install-cni, as the init container does.
    let out = Command::new(agent_bin())
        .arg("install-cni")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "TABBY_CNI_NETWORK_CONFIG",
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"tabby"}]}"#,
        )
        .output()
        .expect("install-cni runs");
    assert!(out.status.success(), "install-cni: {}", String::from_utf8_lossy(&out.stderr));
    lab.pool("10.253.0.0/16", "Always", true);
    let agent_env: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (*k, v.as_str())).chain([("TABBY_BGP", "Disabled"), ("TABBY_MTU", "1450")]).collect();
    lab.start_agents(&agent_env);
    lab.add_pod("node1", "a");
    lab.add_pod("node2", "b");
    let b2 = lab.blocks_of("node2");
    let n1 = lab.node("node1");
    n1.wait_routes("tunnel routes", Duration::from_secs(60), |r| b2.iter().all(|b| r.contains(&format!("{b} via"))));
    let start = Instant::now();
    while !n1.ns.exec(&["nft", "list", "table", "inet", "tabby"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(30), "no nftables table");
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = snapshot(n1, &bin, &conf);
    assert_ne!(during, before, "Tabby changed the node");
    assert!(protos.exists(), "the protocol name file is written");

    lab.node_mut("node1").kill_agent("-TERM");
    let n1 = lab.node("node1");
    // A rolling update (no uninstall): the routes stay.
    assert!(n1.routes().contains("proto 80") || n1.routes().contains("proto tabby"), "{}", n1.routes());
    let out = Command::new("ip")
        .args(["netns", "exec", &n1.ns.name])
        .arg(agent_bin())
        .arg("cleanup")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TABBY_STATE_DIR", n1.dir.join("state"))
        .env("TABBY_AGENT_SOCKET", n1.socket())
        .output()
        .expect("cleanup runs");
    assert!(out.status.success(), "cleanup: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let after = snapshot(n1, &bin, &conf);
    assert_eq!(after.0, before.0, "ip route");
    assert_eq!(after.1, before.1, "ip link");
    assert_eq!(after.2, before.2, "nft list ruleset");
    assert_eq!(after.3, before.3, "CNI directories");
    assert!(!protos.exists());
    // Idempotent.
    let again = Command::new("ip")
        .args(["netns", "exec", &n1.ns.name])
        .arg(agent_bin())
        .arg("cleanup")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("cleanup runs");
    assert!(again.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_runs_on_sigterm_during_uninstall() {
    let _g = serial();
    let Some(mut lab) = Lab::new("cleanup_runs_on_sigterm_during_uninstall", 1, Underlay::Flat).await else { return };
    if !require_tools("cleanup", &["nft"]) {
        return;
    }
    let (bin, conf, protos) = dirs(&lab);
    let env = [
        ("TABBY_CNI_BIN_DIR", bin.display().to_string()),
        ("TABBY_CNI_CONF_DIR", conf.display().to_string()),
        ("TABBY_RT_PROTOS_FILE", protos.display().to_string()),
    ];
    let before = snapshot(lab.node("node1"), &bin, &conf);
    lab.pool("10.254.0.0/16", "Never", true);
    let agent_env: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (*k, v.as_str())).chain([("TABBY_BGP", "Disabled")]).collect();
    lab.start_agents(&agent_env);
    let n1 = lab.node("node1");
    n1.wait_routes("blackhole", Duration::from_secs(60), |r| r.contains("blackhole"));
    // The operator's staged uninstall: the Installation is deleted but held by its finalizer.
    lab.apply(
        "apiVersion: operator.tabby.dev/v1\nkind: Installation\nmetadata: {name: default, finalizers: [operator.tabby.dev/cleanup]}\nspec: {}\n",
    );
    lab.cp.kubectl_ok(&["delete", "installation", "default", "--wait=false"]);
    lab.node_mut("node1").kill_agent("-TERM");
    let n1 = lab.node("node1");
    let after = snapshot(n1, &bin, &conf);
    assert_eq!(after.0, before.0, "ip route after the agent's own cleanup:\n{}", n1.log_tail());
    assert_eq!(after.2, before.2, "nft list ruleset");
    let _ = lab.cp.kubectl(&[
        "patch",
        "installation",
        "default",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}
