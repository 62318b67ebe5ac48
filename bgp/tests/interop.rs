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
    let mut lab = bird_lab(Some("s3cret"), Some("s3cret"), "");
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
    assert!(lab.tabby.peer_line("10.77.1.2").unwrap().contains("received=1"));
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
    let mut lab = bird_lab(None, None, "");
    wait_until("Established", 30, || lab.tabby.established("10.77.1.2"));
    wait_until("BIRD routes at Tabby", 20, || lab.tabby.route("10.201.0.0/24").is_some());
    lab.bird.proc.signal("STOP");
    wait_until("hold timer expiry", 20, || !lab.tabby.established("10.77.1.2"));
    let line = lab.tabby.peer_line("10.77.1.2").unwrap();
    assert!(line.contains("hold_timer_expired"), "last error names the hold timer: {line}");
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
    let in_kernel = |ns: &Netns, p: &str| ns.exec(&["ip", "route", "show", p]).1.contains("via 10.77.1.1");
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
    let mut tabby = Tabby::start(&lab._t, &cfg);
    wait_until("re-established", 30, || lab.bird.established("tabby") && tabby.established("10.77.1.2"));
    wait_until("stale route flushed after End-of-RIB", 20, || !in_kernel(&lab.b, "10.100.2.0/24"));
    assert!(in_kernel(&lab.b, "10.100.1.0/24"));
    assert!(lab.bird.route("10.100.1.0/24").contains("10.77.1.1"));
    assert!(tabby.route("10.201.0.0/24").is_some());
}
