//! `kubectl-tabby` against a real kube-apiserver with seeded objects: every table's columns and content,
//! yaml/json round trips through `kubectl apply`, `ipam check` and `ipam release`, and the error cases.

mod support;

use std::net::TcpListener;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use support::*;
use tabby_testkit::{ControlPlane, Options, repo_root, start_or_skip};

const NGINX_VETH: &str = "tby3cc807f9f1c6"; // sha1sum of "web.nginx": 3cc807f9f1c6…
const API_VETH: &str = "tby18286e7322b3"; // sha1sum of "web.api": 18286e7322b3…
const STARTING_VETH: &str = "tbyb6251d040ab8"; // sha1sum of "default.starting": b6251d040ab8…

/// Nodes n1 and n2, two pools, two blocks with three pods' allocations, affinities, handles, BGP
/// configuration and peers, and two NodeStatuses. Returns the SINCE the mesh peer of n1 shows.
fn seed(cp: &ControlPlane) -> String {
    install_crds(cp);
    let mut objects = namespace("web");
    objects.push(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}}),
    );
    objects.extend([node("n1"), node("n2")]);
    objects.extend([
        ippool(
            "default-ipv4-ippool",
            json!({"cidr": "10.244.0.0/16", "natOutgoing": true, "ipipMode": "Never", "vxlanMode": "CrossSubnet"}),
        ),
        ippool(
            "zone-a",
            json!({"cidr": "10.250.0.0/24", "ipipMode": "Always", "vxlanMode": "Never", "disabled": true,
                   "disableBGPExport": true, "nodeSelector": "zone == 'a'"}),
        ),
        block(
            "10.244.1.0/26",
            "n1",
            &[
                (2, pod_attribute("k8s-pod-network.nginx1", "web", "nginx", "n1")),
                (3, pod_attribute("k8s-pod-network.starting1", "default", "starting", "n1")),
            ],
        ),
        block("10.244.2.0/26", "n2", &[(0, pod_attribute("k8s-pod-network.api1", "web", "api", "n2"))]),
        affinity("n1", "10.244.1.0/26"),
        affinity("n2", "10.244.2.0/26"),
        handle("k8s-pod-network.nginx1", &[("10.244.1.0/26", 1)]),
        handle("k8s-pod-network.starting1", &[("10.244.1.0/26", 1)]),
        handle("k8s-pod-network.api1", &[("10.244.2.0/26", 1)]),
        json!({"apiVersion": "tabby.dev/v1", "kind": "BGPConfiguration", "metadata": {"name": "default"},
               "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": false, "logSeverityScreen": "Info"}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "BGPPeer", "metadata": {"name": "rack-tor"},
               "spec": {"node": "n1", "peerIP": "192.168.1.1", "asNumber": 64513}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "BGPPeer", "metadata": {"name": "global-peer"},
               "spec": {"peerIP": "192.168.2.1", "asNumber": 65000}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "BGPPeer", "metadata": {"name": "rr-mesh"},
               "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "NodeStatus", "metadata": {"name": "n1"}, "spec": {"node": "n1"}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "NodeStatus", "metadata": {"name": "n2"}, "spec": {"node": "n2"}}),
        pod("web", "nginx", "n1", false),
        pod("web", "api", "n2", false),
        pod("web", "hostnet", "n1", true),
        pod("web", "outside", "n1", false),
        pod("default", "starting", "n1", false),
    ]);
    apply(cp, &objects);
    set_pod_ip(cp, "web", "nginx", "10.244.1.2");
    set_pod_ip(cp, "web", "api", "10.244.2.0");
    set_pod_ip(cp, "web", "hostnet", "192.168.0.11");
    set_pod_ip(cp, "web", "outside", "172.16.0.5");
    let now = Timestamp::now();
    patch_status(
        cp,
        "nodestatus",
        None,
        "n1",
        json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllReady", "message": "ok",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "addressV4": "192.168.0.11", "mtu": 1450, "blocks": ["10.244.1.0/26"], "agentVersion": "v0.1.0",
            "lastHeartbeat": now.to_string(),
            "bgp": {"peersEstablished": 1, "peersV4": [
                {"peerIP": "192.168.0.12", "type": "NodeMesh", "state": "Established", "since": now.to_string()},
                {"peerIP": "192.168.1.1", "type": "NodePeer", "state": "Active", "since": "2026-01-02T08:27:05Z",
                 "info": "Socket: Connection refused"}
            ]}
        }),
    );
    patch_status(cp, "nodestatus", None, "n2", json!({"lastHeartbeat": "2026-01-01T00:00:00Z"}));
    now.strftime("%H:%M:%S").to_string()
}

#[tokio::test]
async fn tables_show_calicoctl_columns_and_content() {
    let Some(cp) = start_or_skip("tables_show_calicoctl_columns_and_content", Options::default()).await else {
        return;
    };
    let since = seed(&cp);

    // IPPool: the exact layout, then the wide columns.
    assert_eq!(
        tabby_ok(&cp, &["get", "ippool"]),
        "NAME                  CIDR            SELECTOR\n\
         default-ipv4-ippool   10.244.0.0/16   all()\n\
         zone-a                10.250.0.0/24   zone == 'a'\n"
    );
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "ippools", "-o", "wide"])),
        rows(&[
            &["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"],
            &["default-ipv4-ippool", "10.244.0.0/16", "true", "Never", "CrossSubnet", "false", "false", "all()"],
            &["zone-a", "10.250.0.0/24", "false", "Always", "Never", "true", "true", "zone == 'a'"],
        ])
    );
    // As a kubectl plugin, with the cluster from $KUBECONFIG.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-tabby")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let plugin = std::process::Command::new(&cp.kubectl)
        .args(["tabby", "get", "ippool", "zone-a"])
        .env("PATH", path)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap();
    assert!(plugin.status.success(), "{plugin:?}");
    assert_eq!(
        String::from_utf8_lossy(&plugin.stdout),
        "NAME     CIDR            SELECTOR\nzone-a   10.250.0.0/24   zone == 'a'\n"
    );
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "ippool", "zone-a"])),
        rows(&[&["NAME", "CIDR", "SELECTOR"], &["zone-a", "10.250.0.0/24", "zone == 'a'"]])
    );

    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "ipamblock", "-o", "wide"])),
        rows(&[
            &["NAME", "CIDR", "AFFINITY", "IN-USE", "FREE", "DELETED"],
            &["10-244-1-0-26", "10.244.1.0/26", "host:n1", "2 (3%)", "62 (97%)", "false"],
            &["10-244-2-0-26", "10.244.2.0/26", "host:n2", "1 (2%)", "63 (98%)", "false"],
        ])
    );
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "blockaffinity"])),
        rows(&[
            &["NAME", "NODE", "CIDR", "STATE"],
            &["n1-10-244-1-0-26", "n1", "10.244.1.0/26", "confirmed"],
            &["n2-10-244-2-0-26", "n2", "10.244.2.0/26", "confirmed"],
        ])
    );
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "bgpconfig"])),
        rows(&[&["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"], &["default", "Info", "false", "64512"]])
    );
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "bgppeer"])),
        rows(&[
            &["NAME", "PEERIP", "NODE", "ASN"],
            &["global-peer", "192.168.2.1", "(global)", "65000"],
            &["rack-tor", "192.168.1.1", "n1", "64513"],
            &["rr-mesh", "<none>", "(global)", "(inherited)"],
        ])
    );

    // NodeStatus: the heartbeat column is an age.
    let ns = plain_rows(&tabby_ok(&cp, &["get", "nodestatus", "-o", "wide"]));
    assert_eq!(
        ns[0],
        rows(&[&["NAME", "READY", "ADDRESS", "PEERS", "HEARTBEAT", "ADDRESSV6", "MTU", "BLOCKS", "VERSION"]])[0]
    );
    assert_eq!(ns[1][..4], rows(&[&["n1", "True", "192.168.0.11", "1/2"]])[0][..]);
    assert!(ns[1][4].ends_with("s ago"), "{ns:?}");
    assert_eq!(ns[1][5..], rows(&[&["<none>", "1450", "10.244.1.0/26", "v0.1.0"]])[0][..]);
    assert_eq!(ns[2][..4], rows(&[&["n2", "<none>", "<none>", "0/0"]])[0][..]);
    assert!(ns[2][4].ends_with("d ago"), "{ns:?}");

    // WorkloadEndpoints: the context's namespace, -n, -A, and the interface names.
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "workloadendpoint"])),
        rows(&[&["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"], &["starting", "n1", "10.244.1.3/32", STARTING_VETH]])
    );
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "wep", "-n", "web", "-o", "wide"])),
        rows(&[
            &["WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "HANDLE"],
            &["api", "n2", "10.244.2.0/32", API_VETH, "k8s-pod-network.api1"],
            &["nginx", "n1", "10.244.1.2/32", NGINX_VETH, "k8s-pod-network.nginx1"],
        ])
    );
    assert_eq!(
        plain_rows(&tabby_ok(&cp, &["get", "workloadendpoints", "-A"])),
        rows(&[
            &["NAMESPACE", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"],
            &["default", "starting", "n1", "10.244.1.3/32", STARTING_VETH],
            &["web", "api", "n2", "10.244.2.0/32", API_VETH],
            &["web", "nginx", "n1", "10.244.1.2/32", NGINX_VETH],
        ])
    );

    // node status: by name, by $NODENAME, and a stale agent.
    let status = tabby_ok(&cp, &["node", "status", "n1"]);
    assert!(status.starts_with("Tabby process is running.\n\nIPv4 BGP status\n+"), "{status}");
    assert!(status.ends_with("+\n\nIPv6 BGP status\nNo IPv6 peers found.\n\n"), "{status}");
    assert_eq!(
        bordered_rows(&status),
        rows(&[
            &["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
            &["192.168.0.12", "node-to-node mesh", "up", since.as_str(), "Established"],
            &["192.168.1.1", "node specific", "start", "2026-01-02", "Active Socket: Connection refused"],
        ])
    );
    let expected = status;
    let by_env = tabby_env(&cp.kubeconfig, &["node", "status"], &[("NODENAME", "n1")]);
    assert_eq!((by_env.code, by_env.stdout.as_str()), (0, expected.as_str()), "{by_env:?}");
    let stale = tabby_ok(&cp, &["node", "status", "n2"]);
    assert!(stale.starts_with("Tabby process is not running: its last report was "), "{stale}");
    assert!(stale.contains("IPv4 BGP status\nNo IPv4 peers found.\n"), "{stale}");
    let unknown = tabby_env(&cp.kubeconfig, &["node", "status"], &[("NODENAME", "zzz")]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("zzz ($NODENAME)"), "{unknown:?}");
    assert!(unknown.stderr.contains("Nodes with a NodeStatus: n1, n2."), "{unknown:?}");

    // ipam show: pools, blocks, and who holds an address.
    let show = tabby_ok(&cp, &["ipam", "show", "--show-blocks"]);
    assert_eq!(
        bordered_rows(&show),
        rows(&[
            &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
            &["IP Pool", "10.244.0.0/16", "65536", "3 (0%)", "65533 (100%)"],
            &["Block", "10.244.1.0/26", "64", "2 (3%)", "62 (97%)"],
            &["Block", "10.244.2.0/26", "64", "1 (2%)", "63 (98%)"],
            &["IP Pool", "10.250.0.0/24", "256", "0 (0%)", "256 (100%)"],
        ])
    );
    assert!(show.starts_with("+----------+---------------+-----------+------------+--------------+\n"), "{show}");
    assert_eq!(bordered_rows(&tabby_ok(&cp, &["ipam", "show"])).len(), 3);
    let held = tabby_ok(&cp, &["ipam", "show", "--ip", "10.244.1.2"]);
    for line in [
        "IP 10.244.1.2 is in use",
        "  pool:      default-ipv4-ippool",
        "  handle:    k8s-pod-network.nginx1",
        "  namespace: web",
        "  pod:       nginx",
        "  node:      n1",
        "  used by:   pod web/nginx",
    ] {
        assert!(held.lines().any(|l| l == line), "missing {line:?} in\n{held}");
    }
    assert_eq!(
        tabby_ok(&cp, &["ipam", "show", "--ip", "10.244.1.9"]),
        "IP 10.244.1.9 is not assigned (pool default-ipv4-ippool, block 10.244.1.0/26 of host:n1)\n"
    );
    cp.stop();
}

#[tokio::test]
async fn yaml_and_json_round_trip_through_kubectl_apply() {
    let Some(cp) = start_or_skip("yaml_and_json_round_trip", Options::default()).await else { return };
    seed(&cp);
    let dir = tempfile::tempdir().unwrap();
    for resource in ["ippool", "ipamblock", "blockaffinity", "bgpconfig", "bgppeer", "nodestatus"] {
        let yaml = tabby_ok(&cp, &["get", resource, "-o", "yaml"]);
        assert!(yaml.starts_with("apiVersion: tabby.dev/v1\n"), "{resource}: {yaml}");
        assert!(
            !yaml.contains("managedFields") && !yaml.contains("resourceVersion") && !yaml.contains("uid:"),
            "{yaml}"
        );
        let file = dir.path().join(format!("{resource}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        // Applying the output over the live objects is accepted and changes nothing.
        cp.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", file.to_str().unwrap()]);
        assert_eq!(tabby_ok(&cp, &["get", resource, "-o", "yaml"]), yaml, "{resource} changed by re-applying");
        if resource == "nodestatus" {
            continue; // status is written through the status subresource; a re-created object starts without it
        }
        // Deleting everything and applying the output re-creates the same objects.
        cp.kubectl_ok(&["delete", "-f", file.to_str().unwrap()]);
        assert_eq!(tabby(&cp.kubeconfig, &["get", resource]).stderr, "No resources found.\n");
        cp.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
        assert_eq!(tabby_ok(&cp, &["get", resource, "-o", "yaml"]), yaml, "{resource} differs after re-creating");
    }
    // JSON of one object: the object itself, re-creatable with kubectl apply.
    let json_text = tabby_ok(&cp, &["get", "bgpconfig", "default", "-o", "json"]);
    let value: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(
        (value["apiVersion"].as_str(), value["kind"].as_str()),
        (Some("tabby.dev/v1"), Some("BGPConfiguration"))
    );
    assert_eq!(value["spec"]["nodeToNodeMeshEnabled"], false);
    cp.kubectl_ok(&["delete", "bgpconfiguration", "default"]);
    kubectl_stdin(&cp, &["apply", "-f", "-"], &json_text);
    assert_eq!(tabby_ok(&cp, &["get", "bgpconfig", "default", "-o", "json"]), json_text);
    let pool: Value = serde_json::from_str(&tabby_ok(&cp, &["get", "ippool", "zone-a", "-o", "json"])).unwrap();
    assert_eq!(pool["spec"]["nodeSelector"], "zone == 'a'");
    // Workload endpoints are derived: a read-only view in yaml too.
    let wep = tabby_ok(&cp, &["get", "wep", "nginx", "-n", "web", "-o", "yaml"]);
    assert!(wep.contains(&format!("interfaceName: {NGINX_VETH}")), "{wep}");
    cp.stop();
}

/// Objects of a clean IPAM state: pods nginx (.2) and api (.3) in block 10.244.1.0/26 of n1.
fn seed_clean_ipam(cp: &ControlPlane) {
    install_crds(cp);
    let mut objects = namespace("web");
    objects.push(node("n1"));
    objects.extend([
        ippool("default-ipv4-ippool", json!({"cidr": "10.244.0.0/16", "ipipMode": "Never", "vxlanMode": "Never"})),
        block(
            "10.244.1.0/26",
            "n1",
            &[
                (2, pod_attribute("k8s-pod-network.nginx1", "web", "nginx", "n1")),
                (3, pod_attribute("k8s-pod-network.api1", "web", "api", "n1")),
            ],
        ),
        affinity("n1", "10.244.1.0/26"),
        handle("k8s-pod-network.nginx1", &[("10.244.1.0/26", 1)]),
        handle("k8s-pod-network.api1", &[("10.244.1.0/26", 1)]),
        pod("web", "nginx", "n1", false),
        pod("web", "api", "n1", false),
    ]);
    apply(cp, &objects);
    set_pod_ip(cp, "web", "nginx", "10.244.1.2");
    set_pod_ip(cp, "web", "api", "10.244.1.3");
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.kubectl_ok(&all)).unwrap()
}

#[tokio::test]
async fn ipam_check_finds_every_planted_problem_and_release_rechecks() {
    let Some(cp) = start_or_skip("ipam_check_and_release", Options::default()).await else { return };
    seed_clean_ipam(&cp);
    let clean = tabby_ok(&cp, &["ipam", "check"]);
    assert!(clean.ends_with("Check complete; found 0 problems.\n"), "{clean}");

    // Plant one of each problem.
    let tunnel = |node: &str| json!({"handle_id": format!("vxlan-tunnel-addr-{node}"), "secondary": {"node": node, "type": "vxlanTunnelAddress"}});
    let mut broken = block("10.244.3.0/26", "n1", &[(5, tunnel("n1"))]);
    broken["spec"]["unallocated"].as_array_mut().unwrap().push(json!(5)); // ordinal 5: allocated and free
    let mut planted = vec![
        block(
            "10.244.1.0/26",
            "n1",
            &[
                (2, pod_attribute("k8s-pod-network.nginx1", "web", "nginx", "n1")),
                (3, pod_attribute("k8s-pod-network.api1", "web", "api", "n1")),
                (10, pod_attribute("k8s-pod-network.gone1", "web", "gone", "n1")),
                (11, pod_attribute("k8s-pod-network.gone2", "web", "gone2", "n1")),
                (30, tunnel("n9")),
            ],
        ),
        broken,
        handle("k8s-pod-network.gone1", &[("10.244.1.0/26", 1)]),
        handle("k8s-pod-network.gone2", &[("10.244.1.0/26", 1)]),
        handle("vxlan-tunnel-addr-n9", &[("10.244.1.0/26", 1)]),
        handle("vxlan-tunnel-addr-n1", &[("10.244.3.0/26", 1)]),
        handle("k8s-pod-network.stale", &[("10.244.1.0/26", 1)]),
        handle("k8s-pod-network.api1", &[("10.244.1.0/26", 2)]),
        affinity("n1", "10.244.9.0/26"),
        pod("web", "orphan", "n1", false),
    ];
    apply(&cp, &std::mem::take(&mut planted));
    set_pod_ip(&cp, "web", "orphan", "10.244.1.20");

    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = tabby_ok(&cp, &["ipam", "check", "-o", report.to_str().unwrap()]);
    assert!(out.ends_with("Check complete; found 8 problems.\n"), "{out}");
    for heading in [
        "Allocated addresses with no pod (leaked) (2):",
        "Allocated addresses of nodes that no longer exist (leaked) (1):",
        "Pods whose address has no allocation (1):",
        "Handles without addresses (1):",
        "Inconsistent handles (1):",
        "Inconsistent blocks (1):",
        "Block affinities without their block (1):",
    ] {
        assert!(out.contains(heading), "missing {heading:?} in\n{out}");
    }
    let found: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let summary: Vec<(String, String)> = found["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let what = ["ip", "handle", "block"].iter().find_map(|k| p[*k].as_str()).unwrap_or_default();
            (p["kind"].as_str().unwrap().to_string(), what.to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("allocatedWithoutPod", "10.244.1.10"),
        ("allocatedWithoutPod", "10.244.1.11"),
        ("allocatedWithoutNode", "10.244.1.30"),
        ("podWithoutAllocation", "10.244.1.20"),
        ("handleWithoutAddresses", "k8s-pod-network.stale"),
        ("inconsistentHandle", "k8s-pod-network.api1"),
        ("inconsistentBlock", "10.244.3.0/26"),
        ("affinityWithoutBlock", "10.244.9.0/26"),
    ]
    .iter()
    .map(|(k, w)| (k.to_string(), w.to_string()))
    .collect();
    assert_eq!(summary, expected, "{out}");
    assert!(
        out.contains("  BlockAffinity n1-10-244-9-0-26: node n1 claims block 10.244.9.0/26, which does not exist\n"),
        "{out}"
    );

    // release refuses an address a pod uses, and leaves the block alone.
    let before = get_json(&cp, &["ipamblock", "10-244-1-0-26"]);
    let refused = tabby(&cp.kubeconfig, &["ipam", "release", "--ip", "10.244.1.2"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("refusing to release 10.244.1.2: pod web/nginx uses it"), "{refused:?}");
    let after = get_json(&cp, &["ipamblock", "10-244-1-0-26"]);
    assert_eq!(before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"]);
    let free = tabby(&cp.kubeconfig, &["ipam", "release", "--ip", "10.244.1.40"]);
    assert_eq!(free.code, 1, "{free:?}");
    assert!(free.stderr.contains("10.244.1.40 is not allocated"), "{free:?}");

    // Between check and release a pod takes 10.244.1.11: the re-check keeps it.
    apply(&cp, &[pod("web", "reuser", "n1", false)]);
    set_pod_ip(&cp, "web", "reuser", "10.244.1.11");
    let released = tabby(&cp.kubeconfig, &["ipam", "release", "--from-report", report.to_str().unwrap()]);
    assert_eq!(released.code, 1, "{released:?}");
    assert!(
        released.stdout.contains("Released 10.244.1.10 (handle k8s-pod-network.gone1, pod web/gone)"),
        "{released:?}"
    );
    assert!(released.stdout.contains("Released 10.244.1.30 (handle vxlan-tunnel-addr-n9)"), "{released:?}");
    assert!(released.stdout.contains("Released 2 of 3 leaked addresses."), "{released:?}");
    assert!(released.stderr.contains("refusing to release 10.244.1.11: pod web/reuser uses it"), "{released:?}");

    let block = get_json(&cp, &["ipamblock", "10-244-1-0-26"]);
    let spec = &block["spec"];
    assert_eq!(spec["allocations"][10], Value::Null);
    assert_eq!(spec["allocations"][30], Value::Null);
    assert_eq!(spec["allocations"][11], json!(2), "{spec}");
    assert_eq!(spec["attributes"].as_array().unwrap().len(), 3, "{spec}");
    assert!(spec["unallocated"].as_array().unwrap().ends_with(&[json!(10), json!(30)]), "{spec}");
    assert_eq!(spec["sequenceNumber"], json!(3));
    // Handles of released addresses are gone; the kept one stays.
    let handles = cp.kubectl_ok(&["get", "ipamhandles", "-o", "name"]);
    assert!(!handles.contains("gone1") && !handles.contains("vxlan-tunnel-addr-n9"), "{handles}");
    assert!(handles.contains("gone2"), "{handles}");

    let again = tabby_ok(&cp, &["ipam", "check"]);
    assert!(!again.contains("10.244.1.10 ") && !again.contains("10.244.1.30 "), "{again}");
    assert!(again.ends_with("Check complete; found 6 problems.\n"), "{again}");
    cp.stop();
}

/// A kubeconfig whose server is a port nothing listens on.
fn closed_port_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{port}\"}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn no_cluster_and_usage_errors_explain_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = closed_port_kubeconfig(dir.path());
    for args in [&["get", "ippool"][..], &["node", "status", "n1"], &["ipam", "show"], &["ipam", "check"], &["version"]]
    {
        let run = tabby(&kubeconfig, args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error: cannot reach the cluster at https://127.0.0.1:"), "{run:?}");
        assert!(run.stderr.contains("Connection refused"), "{run:?}");
        assert!(run.stderr.contains("Check that the cluster is up"), "{run:?}");
    }
    assert!(tabby(&kubeconfig, &["version"]).stdout.starts_with("Client Version: v"));

    let missing = tabby(&dir.path().join("nope"), &["get", "ippool"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("no kubeconfig could be loaded") && missing.stderr.contains("--kubeconfig"),
        "{missing:?}"
    );

    let unknown = tabby(&kubeconfig, &["get", "pods"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.contains("unknown resource type \"pods\"") && unknown.stderr.contains("Known types: ippool")
    );

    for args in [
        &["get"][..],
        &["ipam", "release"],
        &["frobnicate"],
        &["get", "ippool", "-o", "xml"],
        &["ipam", "show", "--ip", "x"],
    ] {
        assert_eq!(tabby(&kubeconfig, args).code, 2, "{args:?} is a usage error");
    }
}

#[test]
fn every_command_has_help_with_examples_and_completion_scripts() {
    let kubeconfig = std::path::Path::new("unused");
    for args in [
        &["--help"][..],
        &["node", "--help"],
        &["node", "status", "--help"],
        &["get", "--help"],
        &["ipam", "--help"],
        &["ipam", "show", "--help"],
        &["ipam", "check", "--help"],
        &["ipam", "release", "--help"],
        &["version", "--help"],
        &["policy", "--help"],
        &["policy", "trace", "--help"],
        &["completion", "--help"],
    ] {
        let run = tabby(kubeconfig, args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(run.stdout.contains("Examples:\n  "), "{args:?} has no examples:\n{}", run.stdout);
        assert!(run.stdout.contains("kubectl"), "{args:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let run = tabby(kubeconfig, &["completion", shell]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        assert!(run.stdout.contains("kubectl-tabby") && run.stdout.contains("ipam"), "{shell}");
    }
}

#[tokio::test]
async fn missing_crds_installation_objects_and_nodes_say_what_to_do() {
    let Some(cp) = start_or_skip("missing_crds_installation_objects_and_nodes", Options::default()).await else {
        return;
    };
    // No CRDs: Tabby is not installed.
    for args in
        [&["get", "ippool"][..], &["get", "bgpconfig", "default"], &["node", "status", "n1"], &["ipam", "check"]]
    {
        let run = tabby(&cp.kubeconfig, args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains("Tabby is not installed in this cluster"), "{run:?}");
        assert!(
            run.stderr.contains(".tabby.dev resource") && run.stderr.contains("kubectl create -f operator.yaml"),
            "{run:?}"
        );
    }
    let version = tabby_ok(&cp, &["version"]);
    assert!(
        version.contains("Operator: not found (no Deployment tabby-operator in namespace tabby-operator)"),
        "{version}"
    );
    assert!(version.contains("Agent: not found (no DaemonSet tabby-node in namespace tabby-system)"), "{version}");

    // CRDs but no Installation.
    install_crds(&cp);
    for args in [&["ipam", "show"][..], &["node", "status", "n1"]] {
        let run = tabby(&cp.kubeconfig, args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains("no Installation named \"default\""), "{run:?}");
        assert!(run.stderr.contains("kubectl create -f custom-resources.yaml"), "{run:?}");
    }
    let empty = tabby(&cp.kubeconfig, &["get", "ippool"]);
    assert_eq!((empty.code, empty.stdout.as_str(), empty.stderr.as_str()), (0, "", "No resources found.\n"));
    let absent = tabby(&cp.kubeconfig, &["get", "ippool", "nope"]);
    assert_eq!(absent.code, 1, "{absent:?}");
    assert!(absent.stderr.contains("IPPool \"nope\" not found") && absent.stderr.contains("kubectl tabby get ippool"));

    // An Installation, but the node is unknown, then known without an agent report.
    cp.kubectl_ok(&["create", "-f", repo_root().join("custom-resources.yaml").to_str().unwrap()]);
    let run = tabby(&cp.kubeconfig, &["node", "status", "n1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("node \"n1\" not found: there is no such node"), "{run:?}");
    assert!(run.stderr.contains("No node has a NodeStatus yet"), "{run:?}");
    apply(&cp, &[node("n1")]);
    let run = tabby(&cp.kubeconfig, &["node", "status", "n1"]);
    assert!(run.stderr.contains("the node exists but its Tabby agent has not reported"), "{run:?}");
    let version = tabby_ok(&cp, &["version"]);
    assert!(version.contains("Installation: version unknown, Ready Unknown"), "{version}");

    // version names the images of the operator and the agents.
    let template = |app: &str| {
        json!({"metadata": {"labels": {"app": app}},
               "spec": {"containers": [{"name": app, "image": format!("ghcr.io/tabby-dev/tabby:v9-{app}")}]}})
    };
    let mut objects = namespace("tabby-operator");
    objects.extend(namespace("tabby-system"));
    objects.push(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "tabby-operator", "namespace": "tabby-operator"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "operator"}}, "template": template("operator")}}));
    objects.push(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "tabby-node", "namespace": "tabby-system"},
        "spec": {"selector": {"matchLabels": {"app": "node"}}, "template": template("node")}}));
    apply(&cp, &objects);
    let version = tabby_ok(&cp, &["version"]);
    assert!(version.starts_with("Client Version: v"), "{version}");
    assert!(version.contains("\nOperator: ghcr.io/tabby-dev/tabby:v9-operator (0/1 ready)\n"), "{version}");
    assert!(version.contains("\nAgent: ghcr.io/tabby-dev/tabby:v9-node (0/0 nodes ready)\n"), "{version}");

    // Wrong credentials are told apart from an unreachable cluster.
    let bad = cp.dir().join("bad-kubeconfig");
    std::fs::write(&bad, std::fs::read_to_string(&cp.kubeconfig).unwrap().replace(&cp.token, "wrong-token")).unwrap();
    let run = tabby(&bad, &["get", "ippool"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("rejected your credentials") && run.stderr.contains("--context"), "{run:?}");

    // A valid identity without RBAC rights is told it is not allowed, and what to ask for.
    apply(
        &cp,
        &[
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": "tabby-system"}}),
        ],
    );
    let token = cp.kubectl_ok(&["create", "token", "nobody", "-n", "tabby-system"]);
    let limited = cp.dir().join("limited-kubeconfig");
    std::fs::write(&limited, std::fs::read_to_string(&cp.kubeconfig).unwrap().replace(&cp.token, token.trim()))
        .unwrap();
    let run = tabby(&limited, &["get", "bgppeer"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("you are not allowed to list bgppeers"), "{run:?}");
    assert!(run.stderr.contains("Ask a cluster admin"), "{run:?}");
    let version = tabby(&limited, &["version"]);
    assert_eq!(version.code, 0, "{version:?}");
    assert!(version.stdout.contains("\nOperator: unknown (you are not allowed to read it)\n"), "{version:?}");
    assert!(version.stdout.contains("\nAgent: unknown (you are not allowed to read it)\n"), "{version:?}");
    cp.stop();
}
