//! Network policy on real nodes of the lab (network namespaces, real agents against a real API server,
//! pods wired by the real plugin), with real TCP and UDP packets:
//!
//! - `kubernetes_network_policy`: isolation per direction, podSelector, namespaceSelector, both, named
//!   ports, UDP never opening TCP, SCTP rules rendered as SCTP and never opening TCP, ipBlock with
//!   except on pod addresses, a namespace relabelled after the policy, the node always reaching its pods,
//!   IPv6, per-rule counters in `/metrics`, and everything open again once the policies are gone;
//! - `tiers_pass_log_and_staged`: a tier before `default` with Log (a JSON line), Deny and Pass, a staged
//!   default-deny that only counts, a tier of 61 policies run through chunk chains, an invalid policy that fails closed and says why;
//! - `new_pods_are_isolated_and_reachable_when_add_returns`: the first packet right after CNI ADD,
//!   pod churn under policy, an interface the agent does not know is dropped;
//! - `agent_restart_keeps_policy`: no packet of an allowed flow lost and no denied packet through while
//!   the agent is killed and restarted.
//!
//! SCTP traffic needs the kernel's SCTP; where `socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)` fails the
//! real-SCTP part is skipped with a message (the SCTP rules are still checked to be SCTP, with TCP).

// Each test holds the lab lock for its whole run (one runtime per test): the lab tests must not overlap.
#![allow(clippy::await_holding_lock)]

use std::time::{Duration, Instant};

use tabby_testkit::nodelab::*;
use tabby_testkit::poll::wait;
use tabby_testkit::traffic::{self, serve, tcp, udp};

const T: Duration = Duration::from_millis(700);
const METRICS_PORT: &str = "19399";

/// Waits until `probe` gives `want` (policy converges within seconds), returning how long it took.
fn until(what: &str, want: bool, probe: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    wait(what, Duration::from_secs(20)).every(Duration::from_millis(20)).until(|| probe() == want, String::new);
    start.elapsed()
}

fn metrics(n: &Node) -> String {
    use std::io::{Read, Write};
    n.ns.run(|| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT.parse::<u16>().unwrap())).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("request");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

fn lab_env() -> Vec<(&'static str, &'static str)> {
    vec![("TABBY_BGP", "Enabled"), ("TABBY_HEALTH_PORT", METRICS_PORT)]
}

async fn two_node_lab(test: &str) -> Option<Lab> {
    let lab = Lab::new(test, 2, Underlay::Flat).await?;
    if !require_tools(test, &["nft"]) {
        return None;
    }
    Some(lab)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_network_policy() {
    let _g = serial();
    let Some(mut lab) = two_node_lab("kubernetes_network_policy").await else { return };
    lab.ipv6();
    lab.pool("10.246.0.0/16", "Never", false);
    // A /48, as IPv6 pools usually are (2^74 blocks of /122): the agent must find a free block without
    // listing them.
    lab.pool_v6("fd00:10:246::/48", "Never");
    lab.namespace("x", &[("team", "a")]);
    lab.namespace("y", &[("team", "b")]);
    lab.start_agents(&lab_env());
    let ports: &[(&str, u16, &str)] =
        &[("serve-80-tcp", 80, "TCP"), ("serve-81-tcp", 81, "TCP"), ("serve-81-udp", 81, "UDP")];
    lab.add_pod_in("node1", "x", "a", &[("pod", "a")], ports);
    lab.add_pod_in("node1", "x", "b", &[("pod", "b")], ports);
    lab.add_pod_in("node2", "y", "c", &[("pod", "c")], ports);
    let (a, b, c) = (lab.pod("a"), lab.pod("b"), lab.pod("c"));
    let _servers: Vec<_> = [a, b, c].iter().flat_map(|p| [serve(&p.ns, 80), serve(&p.ns, 81)]).collect();
    let a6 = a.ip6.clone().expect("a has IPv6");
    until("c reaches a before any policy (routes converge)", true, || tcp(&c.ns, &a.ip, 80, T));
    assert!(tcp(&b.ns, &a.ip, 80, T) && udp(&c.ns, &a.ip, 81, T) && tcp(&b.ns, &a6, 80, T));

    // Default deny ingress in x.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n");
    let took = until("default-deny isolates a", false, || tcp(&c.ns, &a.ip, 80, T));
    eprintln!("default-deny enforced {} ms after the API accepted it (including probe time)", took.as_millis());
    assert!(!tcp(&b.ns, &a.ip, 80, T), "same namespace, same node: denied");
    assert!(!tcp(&b.ns, &a6, 80, T), "IPv6 too");
    assert!(!udp(&c.ns, &a.ip, 81, T));
    assert!(tcp(&a.ns, &c.ip, 80, T), "egress is not isolated");
    assert!(tcp(&lab.node("node1").ns, &a.ip, 80, T), "the node always reaches its pods");

    // podSelector on a named port: b to a's serve-80-tcp only.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: serve-80-tcp}]}]\n");
    until("b reaches a on the named port", true, || tcp(&b.ns, &a.ip, 80, T));
    assert!(tcp(&b.ns, &a6, 80, T), "IPv6 through the named-port set");
    assert!(!tcp(&b.ns, &a.ip, 81, T), "another port");
    assert!(!tcp(&c.ns, &a.ip, 80, T), "a podSelector alone is the policy's namespace");

    // namespaceSelector, UDP only: never opens TCP.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-team-b, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{protocol: UDP, port: 81}]}]\n");
    until("c reaches a over UDP 81", true, || udp(&c.ns, &a.ip, 81, T));
    assert!(!tcp(&c.ns, &a.ip, 81, T), "a UDP rule never opens TCP");

    // SCTP: rendered as SCTP, and never opens TCP.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sctp, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{protocol: SCTP, port: 80}]}]\n");
    let n1 = lab.node("node1");
    wait("the SCTP rule is in", Duration::from_secs(20)).until(
        || n1.ns.ok(&["nft", "list", "table", "inet", "tabby"]).contains("sctp dport 80 counter"),
        || n1.ns.ok(&["nft", "list", "table", "inet", "tabby"]),
    );
    assert!(!tcp(&c.ns, &a.ip, 80, T), "an SCTP rule never opens TCP");
    if traffic::sctp_supported() {
        eprintln!("SCTP is supported here, but the lab's servers speak TCP and UDP only: SCTP traffic not sent");
    } else {
        eprintln!(
            "SKIP real SCTP traffic: this machine's kernel has no SCTP (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) \
             fails with EPROTONOSUPPORT); checked instead that the rule is SCTP and does not open TCP"
        );
    }

    // Both selectors in one peer (AND), and a namespace relabelled after the policy.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: and, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {pod: c}}}]}]\n");
    until("c (team b, pod c) reaches b", true, || tcp(&c.ns, &b.ip, 81, T));
    lab.namespace("y", &[("team", "z")]);
    until("relabelled y no longer reaches b", false, || tcp(&c.ns, &b.ip, 81, T));
    assert!(!udp(&c.ns, &a.ip, 81, T), "nor a over UDP");

    // Egress: ipBlock with except, on pod addresses.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: egress, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.246.0.0/16, except: ['10.246.0.0/24']}}]}]\n");
    let c_in_except = c.ip.starts_with("10.246.0.");
    until("a's egress is limited", !c_in_except, || tcp(&a.ns, &c.ip, 80, T));
    assert!(!tcp(&a.ns, "203.0.113.1", 80, T), "outside the block");

    // Counters: the tier-end drops of `default` were counted.
    let m = metrics(n1);
    let dropped = m
        .lines()
        .filter(|l| {
            l.starts_with("tabby_agent_policy_packets_total{")
                && l.contains("action=\"tier-deny\"")
                && l.contains("tier=\"default\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(dropped > 0, "tier-deny counted:\n{m}");
    assert!(m.contains("policy=\"knp:x/from-b\""), "{m}");

    // All gone: open again.
    for p in ["deny", "from-b", "from-team-b", "sctp", "and", "egress"] {
        lab.cp.kubectl_ok(&["delete", "networkpolicy.networking.k8s.io", "-n", "x", p]);
    }
    until("open again", true, || tcp(&c.ns, &a.ip, 81, T));
    until("a's egress open again", true, || tcp(&a.ns, &c.ip, 80, T));
    assert!(tcp(&b.ns, &a6, 81, T));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_pass_log_and_staged() {
    let _g = serial();
    let Some(mut lab) = Lab::new("tiers_pass_log_and_staged", 1, Underlay::Flat).await else { return };
    if !require_tools("tiers_pass_log_and_staged", &["nft"]) {
        return;
    }
    lab.pool("10.245.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Disabled"), ("TABBY_HEALTH_PORT", METRICS_PORT)]);
    lab.add_pod_in("node1", "default", "web", &[("app", "web")], &[]);
    lab.add_pod_in("node1", "default", "cli", &[("app", "cli")], &[]);
    let (web, cli) = (lab.pod("web"), lab.pod("cli"));
    let _s: Vec<_> = [serve(&web.ns, 22), serve(&web.ns, 80), serve(&web.ns, 81)].into_iter().collect();
    until("open", true, || tcp(&cli.ns, &web.ip, 80, T));

    // A staged default-deny of cli's egress: counted, never enforced.
    lab.apply("apiVersion: tabby.dev/v1\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: preview}\nspec: {selector: app == 'cli', types: [Egress]}\n");
    // A tier before default: Log port 22, Deny it, Pass everything else; default: allow 80 only.
    lab.apply("apiVersion: tabby.dev/v1\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n");
    lab.apply("apiVersion: tabby.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: guard}\nspec:\n  tier: security\n  selector: app == 'web'\n  ingress:\n  - {action: Log, protocol: TCP, destination: {ports: [22]}}\n  - {action: Deny, protocol: TCP, destination: {ports: [22]}}\n  - {action: Pass}\n");
    lab.apply("apiVersion: tabby.dev/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: default}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Allow, protocol: TCP, destination: {ports: ['80:80']}}]\n");
    until("port 22 denied in the security tier", false, || tcp(&cli.ns, &web.ip, 22, T));
    until("port 81 ends at default's default deny", false, || tcp(&cli.ns, &web.ip, 81, T));
    assert!(tcp(&cli.ns, &web.ip, 80, T), "passed to default, allowed there");
    let n = lab.node("node1");
    wait("a JSON line for the Log rule", Duration::from_secs(10)).until(
        || {
            std::fs::read_to_string(n.log())
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("policy log") && l.contains("gnp:guard") && l.contains("\"dst_port\":22"))
        },
        || n.log_tail(),
    );
    // Counters are read every 5 s.
    let counted = |what: &str, pred: &dyn Fn(&str) -> bool| {
        wait(what, Duration::from_secs(15)).until(
            || {
                metrics(n)
                    .lines()
                    .any(|l| l.starts_with("tabby_agent_policy_packets_total{") && pred(l) && !l.ends_with(" 0"))
            },
            || metrics(n),
        )
    };
    counted("guard's deny", &|l| l.contains("policy=\"gnp:guard\"") && l.contains("action=\"deny\""));
    counted("default's end", &|l| l.contains("tier=\"default\"") && l.contains("action=\"tier-deny\""));
    counted("the staged default-deny would drop", &|l| {
        l.contains("staged=\"true\"") && l.contains("action=\"tier-deny\"")
    });

    // A long tier: 60 more policies before guard (orders 1.0-6.9) cut the tier into chunk chains; one in
    // the middle allows port 82. Port 80 still passes through every chunk to default, 22 is still denied
    // after them, and the allow in a chunk decides for 82; deleted, 82 ends at default's deny again.
    let fillers: Vec<String> = (0..60)
        .map(|i| {
            let rule = if i == 30 {
                "{action: Allow, protocol: TCP, destination: {ports: [82]}}".to_string()
            } else {
                format!("{{action: Deny, protocol: UDP, destination: {{ports: [{}]}}}}", 10000 + i)
            };
            format!(
                "apiVersion: tabby.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {{name: filler-{i:02}}}\nspec:\n  tier: security\n  order: {}\n  selector: app == 'web'\n  ingress: [{rule}]\n",
                1.0 + f64::from(i) / 10.0
            )
        })
        .collect();
    let _s82 = serve(&web.ns, 82);
    lab.apply(&fillers.join("---\n"));
    until("port 82 allowed by the policy in a chunk", true, || tcp(&cli.ns, &web.ip, 82, T));
    let table = String::from_utf8_lossy(
        &n.ns.command("nft").args(["list", "table", "inet", "tabby"]).output().expect("nft").stdout,
    )
    .to_string();
    assert!(table.contains("chain p-ci-"), "61 policies in one tier are chunked:\n{table}");
    assert!(tcp(&cli.ns, &web.ip, 80, T), "passed through every chunk to default");
    assert!(!tcp(&cli.ns, &web.ip, 22, T), "denied by guard after the chunks");
    assert!(!tcp(&cli.ns, &web.ip, 81, T), "default's end");
    lab.cp.kubectl_ok(&["delete", "globalnetworkpolicy.tabby.dev", "filler-30"]);
    until("port 82 denied once its policy is gone", false, || tcp(&cli.ns, &web.ip, 82, T));
    assert!(tcp(&cli.ns, &web.ip, 80, T), "80 still passes");

    // A policy that does not read fails closed and says why.
    lab.apply("apiVersion: tabby.dev/v1\nkind: NetworkPolicy\nmetadata: {name: typo, namespace: default}\nspec:\n  selector: app == 'cli'\n  types: [Egress]\n  egress: [{action: Allow, destination: {selector: \"app = 'web'\"}}]\n");
    until("cli's egress fails closed", false, || tcp(&cli.ns, &web.ip, 80, T));
    wait("Valid=False names the field", Duration::from_secs(20)).until(
        || {
            let out = lab.cp.kubectl(&[
                "get",
                "networkpolicy.tabby.dev",
                "typo",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Valid\")].message}",
            ]);
            String::from_utf8_lossy(&out.stdout).contains("spec.egress[0].destination.selector")
        },
        || n.log_tail(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pods_are_isolated_and_reachable_when_add_returns() {
    let _g = serial();
    let Some(mut lab) = Lab::new("new_pods_are_isolated_and_reachable_when_add_returns", 1, Underlay::Flat).await
    else {
        return;
    };
    if !require_tools("new_pods", &["nft"]) {
        return;
    }
    lab.pool("10.244.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Disabled"), ("TABBY_HEALTH_PORT", METRICS_PORT)]);
    lab.add_pod_in("node1", "default", "srv", &[("app", "srv")], &[]);
    let _s = serve(&lab.pod("srv").ns, 80);
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: srv, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: srv}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]\n");
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: isolated, namespace: default}\nspec:\n  podSelector: {matchLabels: {role: isolated}}\n  policyTypes: [Ingress, Egress]\n");
    let srv_ip = lab.pod("srv").ip.clone();
    let probe = lab.add_pod_in("node1", "default", "probe", &[("role", "probe")], &[]);
    until("the policy is in (a pod without role client is refused)", false, || {
        tcp(&lab.pods[probe].ns, &srv_ip, 80, T)
    });

    // Churn: pods come and go; each one's first packet after ADD meets its policy.
    for i in 0..6 {
        let client = format!("client{i}");
        let idx = lab.add_pod_in("node1", "default", &client, &[("role", "client")], &[]);
        // 300 ms: shorter than TCP's first retransmission (1 s), so the very first SYN must get through.
        assert!(
            tcp(&lab.pods[idx].ns, &srv_ip, 80, Duration::from_millis(300)),
            "{client}: first packet right after ADD"
        );
        let lonely = format!("lonely{i}");
        let idx = lab.add_pod_in("node1", "default", &lonely, &[("role", "isolated")], &[]);
        let _s = serve(&lab.pods[idx].ns, 80);
        let ip = lab.pods[idx].ip.clone();
        assert!(!tcp(&lab.pods[probe].ns, &ip, 80, T), "{lonely}: isolated from its first moment (ingress)");
        assert!(!tcp(&lab.pods[idx].ns, &srv_ip, 80, T), "{lonely}: isolated from its first moment (egress)");
        let name = lab.pods[idx].name.clone();
        lab.cp.kubectl_ok(&["delete", "pod", "-n", "default", &name, "--wait=false"]);
    }

    // An interface the agent does not know is dropped.
    let n = lab.node("node1");
    let rogue = Netns::new("rogue");
    sh(&[
        "ip",
        "link",
        "add",
        "tbyrogue0000000",
        "netns",
        &n.ns.name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &rogue.name,
    ]);
    n.ns.ip(&["link", "set", "tbyrogue0000000", "up"]);
    rogue.ip(&["addr", "add", "10.244.255.1/32", "dev", "eth0"]);
    rogue.ip(&["link", "set", "eth0", "up"]);
    rogue.ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
    rogue.ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0", "onlink"]);
    n.ns.ok(&["sysctl", "-qw", "net.ipv4.conf.tbyrogue0000000.proxy_arp=1"]);
    n.ns.ip(&["route", "add", "10.244.255.1/32", "dev", "tbyrogue0000000"]);
    assert!(!tcp(&rogue, &srv_ip, 80, T), "an unknown tby interface is dropped");
    let m = metrics(n);
    assert!(
        m.lines().any(|l| l.contains("action=\"unknown-interface\"") && !l.ends_with(" 0")) || {
            std::thread::sleep(Duration::from_secs(6));
            metrics(n).lines().any(|l| l.contains("action=\"unknown-interface\"") && !l.ends_with(" 0"))
        },
        "the drop is counted:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_policy() {
    let _g = serial();
    let Some(mut lab) = Lab::new("agent_restart_keeps_policy", 1, Underlay::Flat).await else { return };
    if !require_tools("agent_restart_keeps_policy", &["nft", "ping"]) {
        return;
    }
    lab.pool("10.243.0.0/16", "Never", false);
    lab.start_agents(&[("TABBY_BGP", "Disabled"), ("TABBY_HEALTH_PORT", METRICS_PORT)]);
    lab.add_pod_in("node1", "default", "srv", &[("app", "srv")], &[]);
    lab.add_pod_in("node1", "default", "friend", &[("role", "friend")], &[]);
    lab.add_pod_in("node1", "default", "stranger", &[("role", "stranger")], &[]);
    let (srv, friend, stranger) = (lab.pod("srv"), lab.pod("friend"), lab.pod("stranger"));
    let _s = serve(&srv.ns, 80);
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: srv, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: srv}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: friend}}}]}]\n");
    until("stranger denied", false, || tcp(&stranger.ns, &srv.ip, 80, T));
    assert!(tcp(&friend.ns, &srv.ip, 80, T));

    // A 20 ms ping from the friend and TCP attempts from the stranger while the agent restarts twice.
    let ping = friend
        .ns
        .command("ping")
        .args(["-c", "400", "-i", "0.02", "-W", "1", "-q", &srv.ip])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (st, path, ip) = (stop.clone(), stranger.ns.path.clone(), srv.ip.clone());
    let attacker = std::thread::spawn(move || {
        tabby_testkit::netns::enter(&path).expect("setns");
        let mut through = 0;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            let target: std::net::SocketAddr = format!("{ip}:80").parse().unwrap();
            if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok() {
                through += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        through
    });
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        let n = lab.node_mut("node1");
        n.kill_agent("-KILL");
        n.start_agent();
        n.wait_ready();
    }
    let out = ping.wait_with_output().expect("ping ends");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let through = attacker.join().expect("attacker");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains(" 0% packet loss"), "the allowed flow lost packets:\n{summary}");
    assert_eq!(through, 0, "denied connections got through during the restarts");
}
