//! Interop with real BIRD 2, FRR bgpd and GoBGP in network namespaces (root needed).
//!
//! Each test builds its own namespaces (10.x addresses exist only inside them), starts the
//! daemons with private configs and sockets, and tears everything down on drop.

mod support;

use support::*;

const TABBY_AS: u32 = 4_200_000_001;

fn tabby_config(me: &str, peer: &str, peer_as: u32, v6_self: &str, extra_peer: &str, extra: &str) -> String {
    format!(
        r#"{{"router_id": "{me}", "asn": {TABBY_AS}, "listen": "{me}:179", "hold_time": 9, "connect_retry": 1,
            "peers": [{{"address": "{peer}", "asn": {peer_as}, "next_hop_v6": "{v6_self}" {extra_peer}}}]
            {extra}}}"#
    )
}

fn bird_config(me: &str, peer: &str, asn: u32, v6_self: &str, n: u8, password: &str) -> String {
    format!(
        r#"router id {me};
log stderr all;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; }}; }}
protocol kernel k6 {{ ipv6 {{ export all; }}; }}
protocol static s4 {{ ipv4; route 10.20{n}.0.0/24 blackhole; }}
protocol static s6 {{ ipv6; route fd20:{n}::/48 blackhole; }}
protocol bgp tabby {{
  local {me} as {asn};
  neighbor {peer} as {TABBY_AS};
  hold time 9; connect retry time 1; error wait time 1, 2;
  {password}
  graceful restart on;
  ipv4 {{ import all; export all; }};
  ipv6 {{ import all; export all; next hop address {v6_self}; }};
}}
"#
    )
}

struct BirdLab {
    tabby: Tabby,
    bird: Bird,
    _t: Netns,
    b: Netns,
}

fn bird_lab(tabby_password: Option<&str>, bird_password: Option<&str>, gr: &str) -> BirdLab {
    let t = Netns::new("t");
    let b = Netns::new("b");
    link(&t, &["10.77.1.1/24", "fd77:1::1/64"], &b, &["10.77.1.2/24", "fd77:1::2/64"]);
    let bp = bird_password.map(|p| format!("password \"{p}\";")).unwrap_or_default();
    let bird = Bird::start(&b, &bird_config("10.77.1.2", "10.77.1.1", 4_200_000_002, "fd77:1::2", 1, &bp));
    let tp = tabby_password.map(|p| format!(", \"password\": \"{p}\"")).unwrap_or_default();
    let extra = format!(r#", "originate": ["10.100.1.0/24", "10.100.2.0/24", "fd10:1::/48"] {gr}"#);
    let tabby = Tabby::start(&t, &tabby_config("10.77.1.1", "10.77.1.2", 4_200_000_002, "fd77:1::1", &tp, &extra));
    BirdLab { tabby, bird, _t: t, b }
}

#[test]
fn bird_routes_both_ways_four_octet_as_md5_and_withdrawals() {
    if !lab_available("bird_routes_both_ways", &["bird", "birdc"]) {
        return;
    }
    let lab = bird_lab(Some("s3cret"), Some("s3cret"), "");
    wait_until("BIRD session Established", 30, || lab.bird.established("tabby") && lab.tabby.established("10.77.1.2"));
    // Tabby → BIRD, IPv4 and IPv6, 4-octet AS in the path.
    wait_until("our routes at BIRD", 20, || {
        !lab.bird.route("10.100.1.0/24").is_empty() && !lab.bird.route("fd10:1::/48").is_empty()
    });
    let r = lab.bird.route("10.100.1.0/24");
    assert!(r.contains("4200000001"), "AS_PATH with 4-octet AS: {r}");
    assert!(lab.bird.route("fd10:1::/48").contains("fd77:1::1"), "IPv6 next hop");
    // BIRD → Tabby.
    wait_until("BIRD routes at Tabby", 20, || {
        lab.tabby.route("10.201.0.0/24").is_some() && lab.tabby.route("fd20:1::/48").is_some()
    });
    let r = lab.tabby.route("10.201.0.0/24").unwrap();
    assert!(r.contains("from=10.77.1.2") && r.contains("nh=10.77.1.2") && r.contains("aspath=[4200000002]"), "{r}");
    assert!(lab.tabby.route("fd20:1::/48").unwrap().contains("nh=fd77:1::2"));
    // Withdrawals both ways.
    lab.tabby.send("withdraw 10.100.1.0/24");
    lab.tabby.send("withdraw fd10:1::/48");
    wait_until("withdrawal at BIRD", 20, || {
        lab.bird.route("10.100.1.0/24").is_empty() && lab.bird.route("fd10:1::/48").is_empty()
    });
    assert!(!lab.bird.route("10.100.2.0/24").is_empty());
    lab.bird.cli("disable s4");
    wait_until("withdrawal at Tabby", 20, || lab.tabby.route("10.201.0.0/24").is_none());
    assert!(lab.tabby.route("fd20:1::/48").is_some());
    // The state API counts what is left (printed on the next status tick).
    wait_until("prefixes_received = 1", 5, || {
        lab.tabby.peer_line("10.77.1.2").is_some_and(|l| l.contains("received=1 "))
    });
}

/// BIRD opens both sessions itself, one over IPv4 and one over IPv6, each with an MD5 key: our IPv4 and
/// IPv6 listeners share port 179, and each carries its peers' keys in its own family.
#[test]
fn bird_connects_to_our_ipv4_and_ipv6_listeners_with_md5() {
    if !lab_available("bird_dual_listeners", &["bird", "birdc"]) {
        return;
    }
    let t = Netns::new("t");
    let b = Netns::new("b");
    link(&t, &["10.77.2.1/24", "fd77:2::1/64"], &b, &["10.77.2.2/24", "fd77:2::2/64"]);
    let bird = Bird::start(
        &b,
        &format!(
            r#"router id 10.77.2.2;
log stderr all;
protocol device {{ scan time 1; }}
protocol static s4 {{ ipv4; route 10.202.0.0/24 blackhole; }}
protocol static s6 {{ ipv6; route fd20:2::/48 blackhole; }}
protocol bgp v4 {{
  local 10.77.2.2 as 65002; neighbor 10.77.2.1 as {TABBY_AS};
  hold time 9; connect retry time 1; error wait time 1, 2; password "k4";
  ipv4 {{ import all; export all; }};
}}
protocol bgp v6 {{
  local fd77:2::2 as 65002; neighbor fd77:2::1 as {TABBY_AS};
  hold time 9; connect retry time 1; error wait time 1, 2; password "k6";
  ipv6 {{ import all; export all; }};
}}
"#
        ),
    );
    // Passive towards both: every session BIRD has was accepted by one of our listeners.
    let tabby = Tabby::start(
        &t,
        &format!(
            r#"{{"router_id": "10.77.2.1", "asn": {TABBY_AS}, "listen": ["10.77.2.1:179", "[fd77:2::1]:179"],
                "hold_time": 9, "connect_retry": 1,
                "peers": [{{"address": "10.77.2.2", "asn": 65002, "passive": true, "password": "k4", "families": ["ipv4"]}},
                          {{"address": "fd77:2::2", "asn": 65002, "passive": true, "password": "k6", "families": ["ipv6"]}}],
                "originate": ["10.100.2.0/24", "fd10:2::/48"]}}"#
        ),
    );
    wait_until_diag(
        "both sessions Established",
        30,
        || {
            bird.established("v4")
                && bird.established("v6")
                && tabby.established("10.77.2.2")
                && tabby.established("fd77:2::2")
        },
        || format!("{}\n{}", bird.log(), tabby.output()),
    );
    wait_until("our routes at BIRD", 20, || {
        !bird.route("10.100.2.0/24").is_empty() && !bird.route("fd10:2::/48").is_empty()
    });
    assert!(bird.route("fd10:2::/48").contains("fd77:2::1"), "IPv6 next hop: {}", bird.route("fd10:2::/48"));
    wait_until("BIRD routes at Tabby", 20, || {
        tabby.route("10.202.0.0/24").is_some() && tabby.route("fd20:2::/48").is_some()
    });
    assert!(tabby.route("fd20:2::/48").unwrap().contains("from=fd77:2::2"));
    // Our side of both connections is port 179: BIRD connected to each listener.
    let ss = t.exec_text(&["ss", "-tn", "state", "established", "sport", "= :179"]).1;
    assert!(ss.contains("10.77.2.1:179") && ss.contains("[fd77:2::1]:179"), "both accepted on our listeners:\n{ss}");
}

#[test]
fn bird_md5_wrong_key_does_not_connect() {
    if !lab_available("bird_md5_wrong_key", &["bird", "birdc"]) {
        return;
    }
    let lab = bird_lab(Some("wrong"), Some("s3cret"), "");
    holds_for("no session with a wrong MD5 key", 8, || {
        !lab.bird.established("tabby") && !lab.tabby.established("10.77.1.2")
    });
}

#[test]
fn bird_hold_timer_expires_when_peer_frozen_and_routes_are_withdrawn() {
    if !lab_available("bird_hold_timer", &["bird", "birdc"]) {
        return;
    }
    let lab = bird_lab(None, None, "");
    wait_until("Established", 30, || lab.tabby.established("10.77.1.2"));
    wait_until("BIRD routes at Tabby", 20, || lab.tabby.route("10.201.0.0/24").is_some());
    lab.bird.proc.signal("STOP");
    wait_until("hold timer expiry", 20, || !lab.tabby.established("10.77.1.2"));
    wait_until_diag(
        "last error names the hold timer",
        5,
        || lab.tabby.peer_line("10.77.1.2").is_some_and(|l| l.contains("hold_timer_expired")),
        || lab.tabby.output(),
    );
    wait_until("routes withdrawn", 5, || {
        lab.tabby.route("10.201.0.0/24").is_none() && lab.tabby.route("fd20:1::/48").is_none()
    });
    lab.bird.proc.signal("CONT");
}

#[test]
fn bird_keeps_our_routes_while_we_restart_until_end_of_rib() {
    if !lab_available("bird_graceful_restart", &["bird", "birdc"]) {
        return;
    }
    let gr = r#", "graceful_restart": {"restart_time": 60}"#;
    let lab = bird_lab(None, None, gr);
    wait_until("Established", 30, || lab.bird.established("tabby"));
    let in_kernel = |ns: &Netns, p: &str| ns.exec_text(&["ip", "route", "show", p]).1.contains("via 10.77.1.1");
    wait_until("our routes in BIRD's kernel table", 20, || {
        in_kernel(&lab.b, "10.100.1.0/24") && in_kernel(&lab.b, "10.100.2.0/24")
    });
    // Kill our speaker without a NOTIFICATION (as a crash or an upgrade would).
    lab.tabby.proc.signal("KILL");
    wait_until("BIRD notices", 20, || !lab.bird.established("tabby"));
    holds_for("BIRD keeps forwarding to our routes", 4, || {
        in_kernel(&lab.b, "10.100.1.0/24") && in_kernel(&lab.b, "10.100.2.0/24")
    });
    // Come back restarting, announcing only 10.100.1.0/24: End-of-RIB flushes 10.100.2.0/24.
    let cfg = tabby_config(
        "10.77.1.1",
        "10.77.1.2",
        4_200_000_002,
        "fd77:1::1",
        "",
        r#", "originate": ["10.100.1.0/24"], "graceful_restart": {"restart_time": 60, "restarting": true}"#,
    );
    let tabby = Tabby::start(&lab._t, &cfg);
    wait_until("re-established", 30, || lab.bird.established("tabby") && tabby.established("10.77.1.2"));
    wait_until("stale route flushed after End-of-RIB", 20, || !in_kernel(&lab.b, "10.100.2.0/24"));
    assert!(in_kernel(&lab.b, "10.100.1.0/24"));
    assert!(lab.bird.route("10.100.1.0/24").contains("10.77.1.1"));
    assert!(tabby.route("10.201.0.0/24").is_some());
}

fn frr_pair_config(password: &str) -> String {
    format!(
        r#"frr defaults traditional
hostname frr
!
router bgp 4200000003
 bgp router-id 10.77.2.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 10.77.2.1 remote-as {TABBY_AS}
 {password}
 neighbor 10.77.2.1 timers 3 9
 neighbor 10.77.2.1 timers connect 1
 address-family ipv4 unicast
  network 10.202.0.0/24
 exit-address-family
 address-family ipv6 unicast
  network fd20:2::/48
  neighbor 10.77.2.1 activate
  neighbor 10.77.2.1 route-map V6NH out
 exit-address-family
!
route-map V6NH permit 10
 set ipv6 next-hop global fd77:2::2
!
"#
    )
}

#[test]
fn frr_routes_both_ways_four_octet_as_md5_and_withdrawals() {
    if !lab_available("frr_routes_both_ways", &["/usr/lib/frr/bgpd", "/usr/lib/frr/zebra", "vtysh"]) {
        return;
    }
    let t = Netns::new("t");
    let f = Netns::new("f");
    link(&t, &["10.77.2.1/24", "fd77:2::1/64"], &f, &["10.77.2.2/24", "fd77:2::2/64"]);
    let frr = Frr::start(&f, &frr_pair_config("neighbor 10.77.2.1 password s3cret"));
    let extra = r#", "originate": ["10.100.1.0/24", "fd10:1::/48"]"#;
    let tabby = Tabby::start(
        &t,
        &tabby_config("10.77.2.1", "10.77.2.2", 4_200_000_003, "fd77:2::1", r#", "password": "s3cret""#, extra),
    );
    wait_until("FRR session Established", 40, || frr.established("10.77.2.1") && tabby.established("10.77.2.2"));
    // Present and valid (FRR resolves the next hops through zebra, which may take a moment).
    wait_until_diag(
        "our routes valid at FRR",
        30,
        || frr.route("10.100.1.0/24")["valid"] == true && frr.route("fd10:1::/48")["valid"] == true,
        || format!("{}\n{}", frr.route("10.100.1.0/24"), frr.route("fd10:1::/48")),
    );
    let r = frr.route("10.100.1.0/24");
    assert_eq!(r["aspath"]["string"], TABBY_AS.to_string(), "{r}");
    wait_until("FRR routes at Tabby", 20, || {
        tabby.route("10.202.0.0/24").is_some() && tabby.route("fd20:2::/48").is_some()
    });
    let r = tabby.route("10.202.0.0/24").unwrap();
    assert!(r.contains("aspath=[4200000003]") && r.contains("nh=10.77.2.2"), "{r}");
    assert!(tabby.route("fd20:2::/48").unwrap().contains("nh=fd77:2::2"));
    tabby.send("withdraw 10.100.1.0/24");
    tabby.send("withdraw fd10:1::/48");
    wait_until("withdrawal at FRR", 20, || frr.route("10.100.1.0/24").is_null() && frr.route("fd10:1::/48").is_null());
    let d = frr.dir.0.to_str().unwrap().to_string();
    run_quiet(&[
        "vtysh",
        "--vty_socket",
        &d,
        "-c",
        "configure terminal",
        "-c",
        "router bgp 4200000003",
        "-c",
        "address-family ipv4 unicast",
        "-c",
        "no network 10.202.0.0/24",
    ]);
    wait_until("withdrawal at Tabby", 20, || tabby.route("10.202.0.0/24").is_none());
    assert!(tabby.route("fd20:2::/48").is_some());
}

#[test]
fn frr_md5_wrong_key_does_not_connect() {
    if !lab_available("frr_md5_wrong_key", &["/usr/lib/frr/bgpd", "/usr/lib/frr/zebra", "vtysh"]) {
        return;
    }
    let t = Netns::new("t");
    let f = Netns::new("f");
    link(&t, &["10.77.2.1/24", "fd77:2::1/64"], &f, &["10.77.2.2/24", "fd77:2::2/64"]);
    let frr = Frr::start(&f, &frr_pair_config("neighbor 10.77.2.1 password s3cret"));
    let tabby = Tabby::start(
        &t,
        &tabby_config("10.77.2.1", "10.77.2.2", 4_200_000_003, "fd77:2::1", r#", "password": "wrong""#, ""),
    );
    holds_for("no session with a wrong MD5 key", 8, || {
        !frr.established("10.77.2.1") && !tabby.established("10.77.2.2")
    });
}

fn gobgp_config(asn: u32, me: &str, peer: &str, peer_as: u32) -> String {
    format!(
        r#"[global.config]
  as = {asn}
  router-id = "{me}"
  local-address-list = ["{me}"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{peer}"
    peer-as = {peer_as}
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#
    )
}

fn as_path_of(gobgp_path: &serde_json::Value) -> Vec<u64> {
    gobgp_path["attrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == 2)
        .flat_map(|a| a["as_paths"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["asns"].as_array().cloned().unwrap_or_default())
        .filter_map(|x| x.as_u64())
        .collect()
}

#[test]
fn gobgp_routes_both_ways_four_octet_as_and_withdrawals() {
    if !lab_available("gobgp_routes_both_ways", &["gobgpd", "gobgp"]) {
        return;
    }
    let t = Netns::new("t");
    let g = Netns::new("g");
    link(&t, &["10.77.3.1/24", "fd77:3::1/64"], &g, &["10.77.3.2/24", "fd77:3::2/64"]);
    let gobgp = GoBgp::start(&g, &gobgp_config(4_200_000_004, "10.77.3.2", "10.77.3.1", TABBY_AS));
    let extra = r#", "originate": ["10.100.1.0/24", "fd10:1::/48"]"#;
    let tabby = Tabby::start(&t, &tabby_config("10.77.3.1", "10.77.3.2", 4_200_000_004, "fd77:3::1", "", extra));
    wait_until("GoBGP session Established", 40, || gobgp.established("10.77.3.1") && tabby.established("10.77.3.2"));
    gobgp.cli(&["global", "rib", "add", "10.203.0.0/24", "-a", "ipv4"]);
    gobgp.cli(&["global", "rib", "add", "fd20:3::/48", "nexthop", "fd77:3::2", "-a", "ipv6"]);
    wait_until("our routes at GoBGP", 20, || {
        !gobgp.route("10.100.1.0/24").is_null() && !gobgp.route("fd10:1::/48").is_null()
    });
    assert_eq!(as_path_of(&gobgp.route("10.100.1.0/24")), vec![u64::from(TABBY_AS)]);
    wait_until("GoBGP routes at Tabby", 20, || {
        tabby.route("10.203.0.0/24").is_some() && tabby.route("fd20:3::/48").is_some()
    });
    let r = tabby.route("10.203.0.0/24").unwrap();
    assert!(r.contains("aspath=[4200000004]") && r.contains("nh=10.77.3.2"), "{r}");
    tabby.send("withdraw 10.100.1.0/24");
    wait_until("withdrawal at GoBGP", 20, || gobgp.route("10.100.1.0/24").is_null());
    assert!(!gobgp.route("fd10:1::/48").is_null());
    gobgp.cli(&["global", "rib", "del", "10.203.0.0/24", "-a", "ipv4"]);
    gobgp.cli(&["global", "rib", "del", "fd20:3::/48", "-a", "ipv6"]);
    wait_until("withdrawal at Tabby", 20, || {
        tabby.route("10.203.0.0/24").is_none() && tabby.route("fd20:3::/48").is_none()
    });
}

#[test]
fn route_reflector_with_bird_frr_and_gobgp_clients() {
    if !lab_available(
        "route_reflector",
        &["bird", "birdc", "/usr/lib/frr/bgpd", "/usr/lib/frr/zebra", "vtysh", "gobgpd", "gobgp"],
    ) {
        return;
    }
    let r = Netns::new("r");
    bridge(&r, &["10.78.0.1/24"]);
    let (c1, c2, c3) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));
    attach(&r, &c1, &["10.78.0.2/24"]);
    attach(&r, &c2, &["10.78.0.3/24"]);
    attach(&r, &c3, &["10.78.0.4/24"]);
    let bird = Bird::start(
        &c1,
        r#"router id 10.78.0.2;
protocol device { scan time 1; }
protocol static s4 { ipv4; route 10.211.0.0/24 blackhole; }
protocol bgp reflector {
  local 10.78.0.2 as 65000;
  neighbor 10.78.0.1 as 65000;
  direct; connect retry time 1; error wait time 1, 2;
  ipv4 { import all; export all; };
}
"#,
    );
    let frr = Frr::start(
        &c2,
        "frr defaults traditional\nhostname c2\n!\nrouter bgp 65000\n bgp router-id 10.78.0.3\n no bgp network import-check\n \
         neighbor 10.78.0.1 remote-as 65000\n neighbor 10.78.0.1 timers connect 1\n address-family ipv4 unicast\n  network 10.212.0.0/24\n \
         exit-address-family\n!\n",
    );
    let gobgp = GoBgp::start(&c3, &gobgp_config(65000, "10.78.0.4", "10.78.0.1", 65000));
    let peers: Vec<String> = ["10.78.0.2", "10.78.0.3", "10.78.0.4"]
        .iter()
        .map(|a| format!(r#"{{"address": "{a}", "asn": 65000, "rr_client": true, "families": ["ipv4"]}}"#))
        .collect();
    let cfg = format!(
        r#"{{"router_id": "10.78.0.1", "asn": 65000, "listen": "10.78.0.1:179", "connect_retry": 1,
            "cluster_id": "9.9.9.9", "peers": [{}]}}"#,
        peers.join(",")
    );
    let tabby = Tabby::start(&r, &cfg);
    wait_until_diag(
        "three clients Established",
        40,
        || ["10.78.0.2", "10.78.0.3", "10.78.0.4"].iter().all(|a| tabby.established(a)),
        || format!("tabby:\n{}\nbird:\n{}\nfrr:\n{}\ngobgp:\n{}", tabby.output(), bird.log(), frr.log(), gobgp.log()),
    );
    gobgp.cli(&["global", "rib", "add", "10.213.0.0/24", "-a", "ipv4"]);
    wait_until("client routes at the reflector", 20, || {
        ["10.211.0.0/24", "10.212.0.0/24", "10.213.0.0/24"].iter().all(|p| tabby.route(p).is_some())
    });
    // BIRD (client 1) learns the FRR and GoBGP routes.
    for (p, origin) in [("10.212.0.0/24", "10.78.0.3"), ("10.213.0.0/24", "10.78.0.4")] {
        wait_until("reflected route at BIRD", 20, || !bird.route(p).is_empty());
        let out = bird.route(p);
        assert!(out.contains(&format!("BGP.originator_id: {origin}")), "{out}");
        assert!(out.contains("BGP.cluster_list: 9.9.9.9"), "{out}");
    }
    // FRR (client 2) learns the BIRD and GoBGP routes.
    for (p, origin) in [("10.211.0.0/24", "10.78.0.2"), ("10.213.0.0/24", "10.78.0.4")] {
        wait_until("reflected route at FRR", 20, || !frr.route(p).is_null());
        let v = frr.route(p);
        assert_eq!(v["originatorId"], origin, "{v}");
        assert_eq!(v["clusterList"]["list"], serde_json::json!(["9.9.9.9"]), "{v}");
    }
    // GoBGP (client 3) learns the BIRD and FRR routes.
    for (p, origin) in [("10.211.0.0/24", "10.78.0.2"), ("10.212.0.0/24", "10.78.0.3")] {
        wait_until("reflected route at GoBGP", 20, || !gobgp.route(p).is_null());
        let v = gobgp.route(p);
        let attrs = v["attrs"].as_array().cloned().unwrap_or_default();
        let orig = attrs.iter().find(|a| a["type"] == 9).map(|a| a["value"].clone());
        let clusters = attrs.iter().find(|a| a["type"] == 10).map(|a| a["value"].clone());
        assert_eq!(orig, Some(serde_json::json!(origin)), "{v}");
        assert_eq!(clusters, Some(serde_json::json!(["9.9.9.9"])), "{v}");
    }
}

/// GTSM (RFC 5082) between two Tabby speakers with a router in between: a one-hop limit refuses
/// the session, a two-hop limit allows it.
#[test]
fn gtsm_enforces_the_hop_limit() {
    if !lab_available("gtsm", &[]) {
        return;
    }
    let (t1, r, t2) = (Netns::new("g"), Netns::new("r"), Netns::new("g"));
    link(&t1, &["10.80.1.1/24"], &r, &["10.80.1.2/24"]);
    link(&r, &["10.80.2.2/24"], &t2, &["10.80.2.1/24"]);
    assert!(r.exec_text(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).0);
    t1.ip(&["route", "add", "default", "via", "10.80.1.2"]);
    t2.ip(&["route", "add", "default", "via", "10.80.2.2"]);
    assert!(t1.exec_text(&["ping", "-c1", "-W2", "10.80.2.1"]).0, "routed path works");
    let cfg = |me: &str, asn: u32, peer: &str, peer_as: u32, passive: bool, hops: u8| {
        format!(
            r#"{{"router_id": "{me}", "asn": {asn}, "listen": "{me}:179", "connect_retry": 1,
                "peers": [{{"address": "{peer}", "asn": {peer_as}, "passive": {passive}, "ttl_security": {hops}, "families": ["ipv4"]}}],
                "originate": ["10.181.0.0/24"]}}"#
        )
    };
    {
        let a = Tabby::start(&t1, &cfg("10.80.1.1", 65001, "10.80.2.1", 65002, false, 1));
        let b = Tabby::start(&t2, &cfg("10.80.2.1", 65002, "10.80.1.1", 65001, true, 1));
        holds_for("no session across two hops with a one-hop GTSM limit", 6, || {
            !a.established("10.80.2.1") && !b.established("10.80.1.1")
        });
    }
    let a = Tabby::start(&t1, &cfg("10.80.1.1", 65001, "10.80.2.1", 65002, false, 2));
    let b = Tabby::start(&t2, &cfg("10.80.2.1", 65002, "10.80.1.1", 65001, true, 2));
    wait_until_diag(
        "session with a two-hop GTSM limit",
        20,
        || a.established("10.80.2.1") && b.established("10.80.1.1"),
        || format!("{}\n{}", a.output(), b.output()),
    );
}

/// Graceful restart helper: BIRD crashes and comes back with the R bit; we keep its routes as
/// stale meanwhile, and its End-of-RIB removes what it no longer announces.
#[test]
fn we_keep_bird_routes_while_bird_restarts() {
    if !lab_available("graceful_restart_helper", &["bird", "birdc"]) {
        return;
    }
    let gr = r#", "graceful_restart": {"restart_time": 60}"#;
    let lab = bird_lab(None, None, gr);
    wait_until("Established", 30, || lab.tabby.established("10.77.1.2"));
    wait_until("BIRD routes at Tabby", 20, || {
        lab.tabby.route("10.201.0.0/24").is_some() && lab.tabby.route("fd20:1::/48").is_some()
    });
    lab.bird.proc.signal("KILL");
    wait_until("session down", 20, || !lab.tabby.established("10.77.1.2"));
    holds_for("BIRD's routes kept as stale", 3, || {
        lab.tabby.route("10.201.0.0/24").is_some_and(|r| r.contains("stale=true"))
            && lab.tabby.route("fd20:1::/48").is_some_and(|r| r.contains("stale=true"))
    });
    // BIRD restarts (-R: graceful restart recovery) without its IPv6 static route.
    let cfg: String = bird_config("10.77.1.2", "10.77.1.1", 4_200_000_002, "fd77:1::2", 1, "")
        .lines()
        .filter(|l| !l.starts_with("protocol static s6"))
        .map(|l| format!("{l}\n"))
        .collect();
    let _bird2 = Bird::start_with(&lab.b, &cfg, &["-R"]);
    wait_until_diag(
        "refreshed route and End-of-RIB sweep",
        30,
        || {
            lab.tabby.route("10.201.0.0/24").is_some_and(|r| r.contains("stale=false"))
                && lab.tabby.route("fd20:1::/48").is_none()
        },
        || lab.tabby.output(),
    );
}

#[test]
fn gobgp_sees_per_peer_keepalive_and_restart_time() {
    if !lab_available("gobgp_sees_per_peer_keepalive_and_restart_time", &["gobgpd", "gobgp"]) {
        return;
    }
    let t = Netns::new("t");
    let g = Netns::new("g");
    link(&t, &["10.77.9.1/24"], &g, &["10.77.9.2/24"]);
    let gobgp = GoBgp::start(&g, &gobgp_config(4_200_000_009, "10.77.9.2", "10.77.9.1", TABBY_AS));
    // Hold 9 s would mean a KEEPALIVE every 3 s; the peer's own keepalive_time asks for one a second.
    let gr = r#", "graceful_restart": {"restart_time": 120}"#;
    let peer = r#", "keepalive_time": 1, "restart_time": 33"#;
    let tabby = Tabby::start(&t, &tabby_config("10.77.9.1", "10.77.9.2", 4_200_000_009, "fd77:9::1", peer, gr));
    wait_until("GoBGP session Established", 40, || gobgp.established("10.77.9.1") && tabby.established("10.77.9.2"));
    let keepalives = || -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&gobgp.cli(&["neighbor", "10.77.9.1", "-j"])).unwrap_or(serde_json::Value::Null);
        v["state"]["messages"]["received"]["keepalive"].as_u64().unwrap_or(0)
    };
    let before = keepalives();
    std::thread::sleep(std::time::Duration::from_secs(6));
    let got = keepalives() - before;
    assert!((5..=8).contains(&got), "{got} KEEPALIVEs in 6 s (want about 6; 2 would be hold/3)");
    let text = gobgp.cli(&["neighbor", "10.77.9.1"]);
    let remote = text.split("Remote:").nth(1).unwrap_or("").to_lowercase();
    assert!(remote.contains("restart time 33"), "GoBGP should see our restart time 33 s:\n{text}");
}
