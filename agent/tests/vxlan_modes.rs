//! VXLAN without BGP: `vxlan.tabby` (VNI 4096, port 4789, MTU underlay − 50), onlink routes via the remote
//! tunnel addresses, permanent neighbour and FDB entries, pod-to-pod across nodes with pod addresses kept.
//! CrossSubnet: nodes split over two subnets joined by a router namespace; direct routes inside a subnet,
//! the tunnel across.

// Each test holds the lab lock for its whole run (one runtime per test, so nothing waits on it
// inside a runtime): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::time::Duration;

use tabby_testkit::nodelab::*;

fn tunnel_addr(lab: &Lab, node: &str) -> String {
    let out = lab.cp.kubectl_ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.metadata.annotations.tabby\\.dev/IPv4VXLANTunnelAddr}",
    ]);
    out.trim().to_string()
}

fn wait_tunnel_addr(lab: &Lab, node: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let a = tunnel_addr(lab, node);
        if !a.is_empty() {
            return a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{node} published no tunnel address:\n{}",
            lab.node(node).log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_always_pod_to_pod() {
    let _g = serial();
    let Some(mut lab) = Lab::new("vxlan_always_pod_to_pod", 3, Underlay::Flat).await else { return };
    lab.pool("10.245.0.0/16", "Always", false);
    // A workload-only pool, first by name: tunnel addresses may not come from it (Calico's allowedUses).
    lab.apply(
        "apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {name: a-pods}\nspec: {cidr: '10.246.0.0/16', blockSize: 26, vxlanMode: Always, allowedUses: [Workload]}\n",
    );
    // No TABBY_MTU: the agent works the pod MTU out (underlay 1500 − 50 for VXLAN) and hands it to the CNI.
    // Pods are wired as soon as the agents say ready: the first network pass comes before that.
    lab.start_agents(&[("TABBY_BGP", "Disabled")]);
    lab.add_pod("node1", "a");
    lab.add_pod("node3", "b");
    let t3 = wait_tunnel_addr(&lab, "node3");
    let b3 = lab.blocks_of("node3");
    let n1 = lab.node("node1");
    n1.wait_routes("vxlan routes", Duration::from_secs(60), |r| {
        b3.iter().all(|b| r.contains(&format!("{b} via {t3} dev vxlan.tabby proto tabby onlink")))
    });
    let link = n1.ns.ip(&["-d", "link", "show", "vxlan.tabby"]);
    assert!(link.contains("vxlan id 4096") && link.contains("dstport 4789"), "{link}");
    assert!(link.contains("mtu 1450"), "{link}");
    let mac3 = lab.cp.kubectl_ok(&[
        "get",
        "node",
        "node3",
        "-o",
        "jsonpath={.metadata.annotations.tabby\\.dev/VXLANTunnelMACAddr}",
    ]);
    let neigh = n1.ns.ip(&["neigh", "show", "dev", "vxlan.tabby"]);
    assert!(neigh.contains(&format!("{t3} lladdr {mac3} PERMANENT")), "{neigh}");
    let fdb = n1.ns.exec(&["bridge", "fdb", "show", "dev", "vxlan.tabby"]);
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(fdb.contains(&format!("{mac3} dst {} self permanent", lab.node("node3").addr)), "{fdb}");
    // Deleted entries come back with the next network pass (diffed against the kernel, not remembered).
    n1.ns.ip(&["neigh", "del", &t3, "dev", "vxlan.tabby"]);
    n1.ns.ok(&["bridge", "fdb", "del", &mac3, "dev", "vxlan.tabby", "dst", &lab.node("node3").addr]);
    lab.wait_for("node1", "neighbour and FDB entries repaired", Duration::from_secs(20), || {
        let neigh = n1.ns.ip(&["neigh", "show", "dev", "vxlan.tabby"]);
        let fdb = n1.ns.ok(&["bridge", "fdb", "show", "dev", "vxlan.tabby"]);
        neigh.contains(&format!("{t3} lladdr {mac3} PERMANENT")) && fdb.contains(&format!("{mac3} dst"))
    });
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    assert!(t3.starts_with("10.245."), "the tunnel address comes from the pool allowed for tunnels: {t3}");
    let blocks = lab.cp.kubectl_ok(&["get", "ipamblocks", "-o", "json"]);
    assert!(blocks.contains("\"vxlanTunnelAddress\""), "tunnel allocations are typed: {blocks}");
    for p in [a, b] {
        let eth0 = p.ns.ip(&["link", "show", "eth0"]);
        assert!(eth0.contains("mtu 1450"), "pod {} gets the VXLAN MTU: {eth0}", p.name);
    }
    assert!(ping(&a.ns, &b.ip, 3), "ping over VXLAN failed\n{}", n1.routes());
    assert_eq!(seen_source(&b.ns, &a.ns, &b.ip, 7071).to_string(), a.ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_cross_subnet_direct_inside_tunnel_across() {
    let _g = serial();
    let Some(mut lab) = Lab::new("vxlan_cross_subnet_direct_inside_tunnel_across", 3, Underlay::TwoSubnets).await
    else {
        return;
    };
    // node1 and node3 share 192.168.50.0/24; node2 is on 192.168.51.0/24 behind the router.
    lab.pool("10.246.0.0/16", "CrossSubnet", false);
    lab.start_agents(&[("TABBY_BGP", "Disabled"), ("TABBY_MTU", "1450")]);
    lab.add_pod("node1", "a");
    lab.add_pod("node2", "b");
    lab.add_pod("node3", "c");
    let t2 = wait_tunnel_addr(&lab, "node2");
    let (b2, b3) = (lab.blocks_of("node2"), lab.blocks_of("node3"));
    let n1 = lab.node("node1");
    let n3addr = lab.node("node3").addr.clone();
    n1.wait_routes("direct and tunnel routes", Duration::from_secs(60), |r| {
        b3.iter().all(|b| r.contains(&format!("{b} via {n3addr} dev eth0 proto tabby")))
            && b2.iter().all(|b| r.contains(&format!("{b} via {t2} dev vxlan.tabby proto tabby onlink")))
    });
    let (a, b, c) = (lab.pod("a"), lab.pod("b"), lab.pod("c"));
    assert!(ping(&a.ns, &c.ip, 3), "same subnet, direct\n{}", n1.routes());
    assert!(ping(&a.ns, &b.ip, 3), "across the router, tunnelled\n{}", n1.routes());
    assert_eq!(seen_source(&b.ns, &a.ns, &b.ip, 7072).to_string(), a.ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_dual_stack_ipv6_rides_the_ipv4_tunnel() {
    let _g = serial();
    let Some(mut lab) = Lab::new("vxlan_dual_stack_ipv6_rides_the_ipv4_tunnel", 2, Underlay::Flat).await else {
        return;
    };
    // IPv6 forwarding on the nodes; their IPv6 addresses are not needed (nor detected): the underlay is IPv4.
    lab.ipv6();
    lab.pool("10.247.0.0/16", "Always", false);
    lab.pool_v6("fd00:10:247::/112", "Always");
    lab.start_agents(&[("TABBY_BGP", "Disabled")]);
    lab.add_pod("node1", "a6");
    lab.add_pod("node2", "b6");
    wait_tunnel_addr(&lab, "node2");
    let mac2 = lab.cp.kubectl_ok(&[
        "get",
        "node",
        "node2",
        "-o",
        "jsonpath={.metadata.annotations.tabby\\.dev/VXLANTunnelMACAddr}",
    ]);
    let m: Vec<u8> = mac2.split(':').map(|x| u8::from_str_radix(x, 16).expect("MAC")).collect();
    // The link-local address node2's MAC implies (modified EUI-64).
    let ll: std::net::Ipv6Addr =
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]].into();
    let b2: Vec<String> = lab.blocks_of("node2").into_iter().filter(|b| b.contains(':')).collect();
    assert!(!b2.is_empty(), "node2 has an IPv6 block");
    let n1 = lab.node("node1");
    n1.wait_routes6("IPv6 routes through the tunnel", Duration::from_secs(60), |r| {
        b2.iter().all(|b| r.contains(&format!("{b} via {ll} dev vxlan.tabby proto tabby")))
    });
    let neigh = n1.ns.ip(&["-6", "neigh", "show", "dev", "vxlan.tabby"]);
    assert!(neigh.contains(&format!("{ll} lladdr {mac2} PERMANENT")), "{neigh}");
    let (a, b) = (lab.pod("a6"), lab.pod("b6"));
    let (a6, b6) = (a.ip6.clone().expect("a's IPv6"), b.ip6.clone().expect("b's IPv6"));
    assert!(ping(&a.ns, &b6, 3), "ping {a6} → {b6} over VXLAN failed\n{}", n1.routes6());
    assert_eq!(seen_source(&b.ns, &a.ns, &b6, 7073).to_string(), a6, "pod addresses kept over IPv6 too");
    assert!(ping(&a.ns, &b.ip, 3), "IPv4 beside it");
}
