//! The commands: ADD, DEL, CHECK, STATUS, GC and VERSION, wired the Calico way (docs/cni.md).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tabby_wire::proto::{self, ClientError, Op, Response};
use tabby_wire::{attachment_veth, handle_id};

use crate::log::{Level, Logger};
use crate::netlink::{self, Link, NetNs, Netlink, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RTPROT_BOOT, RTPROT_TABBY, Route};
use crate::spec::{self, AddResult, CniError, Interface, NetConf, code};

/// The MAC of every host-side veth (the pod resolves its gateway to it by proxy ARP).
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The pod's IPv4 gateway: link-local, answered by the host veth's proxy ARP.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway: the host veth's EUI-64 link-local address derived from [`HOST_MAC`].
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The invocation's environment (`CNI_*`).
#[derive(Debug, Default, Clone)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, … from `CNI_ARGS`.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads `CNI_*` through `env`; only the variables every command needs are required here.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let invalid = |what: String| CniError::new(code::INVALID_ENV, "invalid environment", what);
        let command =
            env("CNI_COMMAND").filter(|c| !c.is_empty()).ok_or_else(|| invalid("CNI_COMMAND is not set".into()))?;
        let mut args = BTreeMap::new();
        for pair in env("CNI_ARGS").unwrap_or_default().split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| invalid(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))?;
            args.insert(k.to_string(), v.to_string());
        }
        Ok(Invocation {
            command,
            container_id: env("CNI_CONTAINERID").unwrap_or_default(),
            netns: env("CNI_NETNS").unwrap_or_default(),
            ifname: env("CNI_IFNAME").unwrap_or_default(),
            args,
        })
    }

    fn require_container(&self, netns: bool) -> Result<(), CniError> {
        let invalid = |what: String| CniError::new(code::INVALID_ENV, "invalid environment", what);
        if self.container_id.is_empty() {
            return Err(invalid("CNI_CONTAINERID is not set".into()));
        }
        if !self.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            || !self.container_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            return Err(invalid(format!(
                "CNI_CONTAINERID {:?}: must be letters, digits, '_', '.' or '-'",
                self.container_id
            )));
        }
        if self.ifname.is_empty() {
            return Err(invalid("CNI_IFNAME is not set".into()));
        }
        if self.ifname.len() > 15
            || self.ifname == "."
            || self.ifname == ".."
            || self.ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(invalid(format!("CNI_IFNAME {:?}: not a valid interface name", self.ifname)));
        }
        if netns && self.netns.is_empty() {
            return Err(invalid("CNI_NETNS is not set".into()));
        }
        Ok(())
    }

    fn pod(&self) -> (Option<String>, Option<String>) {
        let get = |k: &str| self.args.get(k).filter(|v| !v.is_empty()).cloned();
        (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME"))
    }

    /// The host veth name: from the pod when the runtime names it, else from the container ID.
    pub fn host_veth(&self) -> String {
        let (ns, pod) = self.pod();
        attachment_veth(ns.as_deref(), pod.as_deref(), &self.container_id)
    }
}

/// Runs one invocation; returns the exit code and what to print on stdout.
pub fn run(stdin: &[u8], env: &dyn Fn(&str) -> Option<String>) -> (i32, String) {
    let started = Instant::now();
    let version_hint = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| spec::SPEC_VERSION.to_string());
    let fail = |e: CniError, log: &mut Logger| {
        log.error(&format!("code={} msg={:?} details={:?}", e.code, e.msg, e.details));
        (1, e.to_json(&version_hint).to_string())
    };
    let inv = match Invocation::from_env(env) {
        Ok(i) => i,
        Err(e) => return fail(e, &mut Logger::off()),
    };
    if inv.command == "VERSION" {
        let v = json!({"cniVersion": version_hint, "supportedVersions": spec::SUPPORTED_VERSIONS});
        return (0, v.to_string());
    }
    let conf = match spec::parse_conf(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e, &mut Logger::off()),
    };
    let mut log =
        Logger::open(&conf.log_file_path, Level::parse(conf.log_level.as_deref()), &inv.command, &inv.container_id);
    let result = match inv.command.as_str() {
        "ADD" => inv.require_container(true).and_then(|()| add(&conf, &inv, &mut log, started)).map(Some),
        "DEL" => inv.require_container(false).and_then(|()| del(&conf, &inv, &mut log, started)).map(|()| None),
        "CHECK" if !spec::allows_check(&conf.cni_version) => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("configuration version {} does not allow CHECK (0.4.0 and later do)", conf.cni_version),
        )),
        "CHECK" => inv.require_container(true).and_then(|()| check(&conf, &inv, &mut log)).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        "GC" => gc(&conf, &mut log).map(|()| None),
        other => Err(CniError::new(code::INVALID_ENV, "invalid environment", format!("unknown CNI_COMMAND {other:?}"))),
    };
    match result {
        Ok(Some(out)) => (0, out.to_string()),
        Ok(None) => (0, String::new()),
        Err(e) => fail(e, &mut log),
    }
}

fn agent_call(conf: &NetConf, op: Op) -> Result<Response, CniError> {
    agent_call_within(conf, op, Duration::from_secs(conf.agent_timeout_seconds))
}

/// How long STATUS waits for the agent. The runtime calls STATUS inside its own status call, which the kubelet
/// makes every few seconds and counts on to see the runtime alive: an agent that does not answer must make
/// the network not ready (STATUS fails), not the runtime look down.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

fn agent_call_within(conf: &NetConf, op: Op, timeout: Duration) -> Result<Response, CniError> {
    let socket = Path::new(&conf.agent_socket);
    let resp = proto::call(socket, op, timeout).map_err(|e| match e {
        ClientError::Connect(..) => CniError::new(
            code::TRY_AGAIN_LATER,
            "the Tabby agent is not reachable; try again later",
            format!("socket {}: {e}", conf.agent_socket),
        ),
        e => CniError::new(
            code::TRY_AGAIN_LATER,
            "the Tabby agent did not answer; try again later",
            format!("socket {}: {e}", conf.agent_socket),
        ),
    })?;
    if let Some(err) = resp.error {
        return Err(CniError::new(err.code, err.msg, err.details));
    }
    Ok(resp)
}

fn nl_err(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::NETLINK, "configuring the pod network failed", e.to_string())
}

fn open_netns(path: &str) -> Result<NetNs, CniError> {
    NetNs::open_checked(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            CniError::new(code::UNKNOWN_CONTAINER, "the container's network namespace does not exist", path.to_string())
        }
        _ => CniError::new(code::INVALID_ENV, "CNI_NETNS is not a network namespace", format!("{path}: {e}")),
    })
}

/// `started`: when this invocation began, for the timing line logged at debug level.
fn add(conf: &NetConf, inv: &Invocation, log: &mut Logger, started: Instant) -> Result<Value, CniError> {
    let pod_ns = open_netns(&inv.netns)?;
    let host_ns = NetNs::current().map_err(nl_err)?;
    let handle = handle_id(&conf.name, &inv.container_id);
    let (namespace, pod) = inv.pod();
    let op = Op::Add {
        handle: handle.clone(),
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        namespace,
        pod,
    };
    // The agent allocates while this thread builds the veth pair: ADD costs the longer of the two.
    let asked = {
        let conf = conf.clone();
        std::thread::spawn(move || agent_call(&conf, op))
    };
    let host_veth = inv.host_veth();
    let mut links = Links::open(&pod_ns, &host_ns);
    let prepared = links.as_mut().map_err(nl_err).and_then(|l| l.prepare(inv, &host_veth, conf.mtu));
    let veth_ms = started.elapsed().as_secs_f64() * 1e3;
    let resp = asked
        .join()
        .unwrap_or_else(|_| Err(CniError::new(code::AGENT, "asking the agent failed", "the request thread panicked")));
    // On failure: the error, and whether an allocation was made (and must be released).
    let (e, allocated): (CniError, bool) = match (prepared, resp) {
        (Ok(()), Ok(resp)) => {
            let mut ips = Vec::new();
            for s in &resp.ips {
                match spec::parse_cidr(s) {
                    Some((ip, _)) => ips.push(ip),
                    None => {
                        rollback(links.ok(), &host_veth, &inv.ifname, conf, &handle, log);
                        return Err(CniError::new(code::AGENT, "the agent returned an invalid address", s.clone()));
                    }
                }
            }
            log.info(&format!("allocated {ips:?} handle={handle}"));
            let mtu = if conf.mtu != 0 { conf.mtu } else { resp.mtu.filter(|m| *m != 0).unwrap_or(1500) };
            let answered_ms = started.elapsed().as_secs_f64() * 1e3;
            match links.as_mut().map_err(nl_err).and_then(|l| l.configure(inv, &host_veth, &ips, mtu)) {
                Ok(r) => {
                    log.info(&format!("wired {} <-> {} mtu {mtu}", inv.ifname, host_veth));
                    log.debug(&format!(
                        "timing: veth ready {veth_ms:.2} ms, agent answered {answered_ms:.2} ms, done {:.2} ms",
                        started.elapsed().as_secs_f64() * 1e3
                    ));
                    return Ok(r.to_json(&conf.cni_version));
                }
                Err(e) => (e, true),
            }
        }
        (Err(e), Ok(_)) => (e, true),
        (_, Err(e)) => (e, false),
    };
    log.error(&format!("ADD failed, rolling back: {e}"));
    let links = links.ok();
    if allocated {
        rollback(links, &host_veth, &inv.ifname, conf, &handle, log);
    } else if let Some(mut l) = links {
        l.remove(&host_veth, &inv.ifname);
    }
    Err(e)
}

/// Removes what ADD built and releases the allocation.
fn rollback(links: Option<Links>, host_veth: &str, ifname: &str, conf: &NetConf, handle: &str, log: &mut Logger) {
    if let Some(mut l) = links {
        l.remove(host_veth, ifname);
    }
    if let Err(re) = agent_call(conf, Op::Del { handle: handle.to_string() }) {
        log.error(&format!("releasing the allocation failed: {re}"));
    }
}

fn sysctl(path: &str, value: &str) -> Result<(), CniError> {
    std::fs::write(path, value).map_err(|e| nl_err(format!("sysctl {path}: {e}")))
}

/// Netlink sockets in the host and the pod namespace, and the pair of links ADD builds.
struct Links {
    host: Netlink,
    pod: Netlink,
    host_link: Link,
    pod_link: Link,
}

impl Links {
    fn open(pod_ns: &NetNs, host_ns: &NetNs) -> Result<Links, std::io::Error> {
        Ok(Links {
            host: Netlink::open()?,
            pod: Netlink::open_in(pod_ns, host_ns)?,
            host_link: Link::default(),
            pod_link: Link::default(),
        })
    }

    /// Creates the veth pair (from inside the pod, the peer straight into the host), sets the host
    /// side's sysctls and brings both ends up. Needs no address yet.
    fn prepare(&mut self, inv: &Invocation, host_veth: &str, mtu: u32) -> Result<(), CniError> {
        // A repeated ADD (or a stale pair of an earlier sandbox of the same pod) starts from a clean slate.
        if let Some(l) = self.pod.link_by_name(&inv.ifname).map_err(nl_err)? {
            self.pod.delete_link(l.index).map_err(nl_err)?;
        }
        if let Some(l) = self.host.link_by_name(host_veth).map_err(nl_err)? {
            self.host.delete_link(l.index).map_err(nl_err)?;
        }
        let host_ns = NetNs::current().map_err(nl_err)?;
        let mtu = if mtu == 0 { 1500 } else { mtu };
        self.pod.create_veth(&inv.ifname, host_veth, &host_ns, mtu, HOST_MAC).map_err(nl_err)?;
        let missing = |n: &str| nl_err(format!("{n} vanished right after it was created"));
        self.host_link = self.host.link_by_name(host_veth).map_err(nl_err)?.ok_or_else(|| missing(host_veth))?;
        for (k, v) in [("route_localnet", "1"), ("proxy_arp", "1"), ("forwarding", "1")] {
            sysctl(&format!("/proc/sys/net/ipv4/conf/{host_veth}/{k}"), v)?;
        }
        sysctl(&format!("/proc/sys/net/ipv4/neigh/{host_veth}/proxy_delay"), "0")?;
        // IPv6 settings go on before the link is up (no DAD on its link-local), when the host has IPv6.
        // `forwarding` waits for an IPv6 address (configure): on an IPv4-only pod it would only make the
        // kernel's deletion of the pair ~15 ms slower (router multicast and anycast to leave).
        if Path::new(&format!("/proc/sys/net/ipv6/conf/{host_veth}")).exists() {
            for (k, v) in [("accept_dad", "0"), ("accept_ra", "0"), ("proxy_ndp", "1")] {
                sysctl(&format!("/proc/sys/net/ipv6/conf/{host_veth}/{k}"), v)?;
            }
        }
        self.host.set_up(self.host_link.index).map_err(nl_err)?;
        self.pod_link = self.pod.link_by_name(&inv.ifname).map_err(nl_err)?.ok_or_else(|| missing(&inv.ifname))?;
        self.pod.set_up(self.pod_link.index).map_err(nl_err)?;
        Ok(())
    }

    /// Puts the addresses and routes on the prepared pair.
    fn configure(
        &mut self,
        inv: &Invocation,
        host_veth: &str,
        ips: &[IpAddr],
        mtu: u32,
    ) -> Result<AddResult, CniError> {
        let (hl, pl) = (self.host_link.clone(), self.pod_link.clone());
        if pl.mtu != mtu {
            self.pod.set_mtu(pl.index, mtu).map_err(nl_err)?;
            self.host.set_mtu(hl.index, mtu).map_err(nl_err)?;
        }
        if ips.iter().any(IpAddr::is_ipv6) {
            if !Path::new(&format!("/proc/sys/net/ipv6/conf/{host_veth}")).exists() {
                return Err(nl_err(format!("an IPv6 address was allocated but IPv6 is disabled on {host_veth}")));
            }
            sysctl(&format!("/proc/sys/net/ipv6/conf/{host_veth}/forwarding"), "1")?;
        }
        let mut result = AddResult {
            interfaces: vec![
                Interface { name: host_veth.to_string(), mac: netlink::mac_string(&hl.mac), sandbox: None },
                Interface {
                    name: inv.ifname.clone(),
                    mac: netlink::mac_string(&pl.mac),
                    sandbox: Some(inv.netns.clone()),
                },
            ],
            ips: Vec::new(),
            routes: Vec::new(),
        };
        for ip in ips {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            self.pod.add_addr(pl.index, *ip, prefix).map_err(nl_err)?;
            result.ips.push((*ip, prefix, None, 1));
        }
        let route = |dst: Option<IpAddr>, dst_len: u8, gateway: Option<IpAddr>, oif: i32, protocol: u8, scope: u8| {
            Route { dst, dst_len, gateway, oif: Some(oif), protocol, scope }
        };
        if ips.iter().any(IpAddr::is_ipv4) {
            let gw = IpAddr::V4(GATEWAY_V4);
            self.pod
                .add_route(&route(Some(gw), 32, None, pl.index, RTPROT_BOOT, RT_SCOPE_LINK), false)
                .map_err(nl_err)?;
            self.pod
                .add_route(&route(None, 0, Some(gw), pl.index, RTPROT_BOOT, RT_SCOPE_UNIVERSE), false)
                .map_err(nl_err)?;
            result.routes.push((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, Some(gw)));
        }
        if ips.iter().any(IpAddr::is_ipv6) {
            let gw = IpAddr::V6(GATEWAY_V6);
            self.pod
                .add_route(&route(None, 0, Some(gw), pl.index, RTPROT_BOOT, RT_SCOPE_UNIVERSE), true)
                .map_err(nl_err)?;
            result.routes.push((IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0, Some(gw)));
        }
        for ip in ips {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            self.host
                .add_route(&route(Some(*ip), len, None, hl.index, RTPROT_TABBY, RT_SCOPE_LINK), ip.is_ipv6())
                .map_err(nl_err)?;
        }
        Ok(result)
    }

    /// Deletes both ends (best effort: used on the failure path).
    fn remove(&mut self, host_veth: &str, ifname: &str) {
        if let Ok(Some(l)) = self.host.link_by_name(host_veth) {
            let _ = self.host.delete_link(l.index);
        }
        if let Ok(Some(l)) = self.pod.link_by_name(ifname) {
            let _ = self.pod.delete_link(l.index);
        }
    }
}

fn del(conf: &NetConf, inv: &Invocation, log: &mut Logger, started: Instant) -> Result<(), CniError> {
    // The release runs beside the interface teardown (the kernel's veth deletion waits for RCU grace
    // periods). Released addresses go to the end of their block's free list, so the address is not handed
    // out again in the moment both take.
    let handle = handle_id(&conf.name, &inv.container_id);
    let released = {
        let (conf, handle) = (conf.clone(), handle.clone());
        std::thread::spawn(move || agent_call(&conf, Op::Del { handle }))
    };
    let teardown = del_links(inv, log);
    let links_ms = started.elapsed().as_secs_f64() * 1e3;
    let resp = released.join().unwrap_or_else(|_| {
        Err(CniError::new(code::AGENT, "asking the agent failed", "the request thread panicked"))
    })?;
    teardown?;
    log.info(&format!("released {} address(es) of {handle}", resp.released));
    log.debug(&format!(
        "timing: links deleted {links_ms:.2} ms, agent released {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    Ok(())
}

fn del_links(inv: &Invocation, log: &mut Logger) -> Result<(), CniError> {
    if !inv.netns.is_empty()
        && let Ok(pod_ns) = NetNs::open_checked(&inv.netns)
    {
        let host_ns = NetNs::current().map_err(nl_err)?;
        let mut pod = Netlink::open_in(&pod_ns, &host_ns).map_err(nl_err)?;
        if let Some(l) = pod.link_by_name(&inv.ifname).map_err(nl_err)? {
            pod.delete_link(l.index).map_err(nl_err)?;
            log.info(&format!("deleted {}", inv.ifname));
        } else {
            // The pod side is gone but the namespace is not: remove a host side left behind.
            let mut host = Netlink::open().map_err(nl_err)?;
            if let Some(l) = host.link_by_name(&inv.host_veth()).map_err(nl_err)? {
                host.delete_link(l.index).map_err(nl_err)?;
                log.info(&format!("deleted stale {}", l.name));
            }
        }
    }
    Ok(())
}

fn check(conf: &NetConf, inv: &Invocation, log: &mut Logger) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "invalid network configuration", "CHECK needs prevResult")
    })?;
    let prev = spec::parse_prev_result(prev)?;
    let pod_ns = open_netns(&inv.netns)?;
    let host_ns = NetNs::current().map_err(nl_err)?;
    let mismatch = |what: String| CniError::new(code::CHECK_MISMATCH, "the attachment differs from prevResult", what);
    let mut pod = Netlink::open_in(&pod_ns, &host_ns).map_err(nl_err)?;
    let pl = pod
        .link_by_name(&inv.ifname)
        .map_err(nl_err)?
        .ok_or_else(|| mismatch(format!("interface {} is missing in {}", inv.ifname, inv.netns)))?;
    if !pl.up {
        return Err(mismatch(format!("interface {} is down", inv.ifname)));
    }
    let mut have = pod.addrs(Some(pl.index), false).map_err(nl_err)?;
    have.extend(pod.addrs(Some(pl.index), true).map_err(nl_err)?);
    for (ip, prefix) in &prev.ips {
        if !have.iter().any(|a| a.addr == *ip && a.prefix == *prefix) {
            return Err(mismatch(format!("address {ip}/{prefix} is missing on {}", inv.ifname)));
        }
    }
    for v6 in [false, true] {
        if !prev.ips.iter().any(|(ip, _)| ip.is_ipv6() == v6) {
            continue;
        }
        let gw = if v6 { IpAddr::V6(GATEWAY_V6) } else { IpAddr::V4(GATEWAY_V4) };
        let routes = pod.routes(v6).map_err(nl_err)?;
        if !routes.iter().any(|r| r.dst_len == 0 && r.gateway == Some(gw) && r.oif == Some(pl.index)) {
            return Err(mismatch(format!("the default route via {gw} is missing")));
        }
    }
    let mut host = Netlink::open().map_err(nl_err)?;
    let host_veth = inv.host_veth();
    let hl = host
        .link_by_name(&host_veth)
        .map_err(nl_err)?
        .ok_or_else(|| mismatch(format!("host interface {host_veth} is missing")))?;
    for v6 in [false, true] {
        let routes = host.routes(v6).map_err(nl_err)?;
        for (ip, _) in prev.ips.iter().filter(|(ip, _)| ip.is_ipv6() == v6) {
            if !routes.iter().any(|r| r.dst == Some(*ip) && r.oif == Some(hl.index)) {
                return Err(mismatch(format!("host route to {ip} via {host_veth} is missing")));
            }
        }
    }
    let handle = handle_id(&conf.name, &inv.container_id);
    let resp = agent_call(conf, Op::Check { handle: handle.clone() })?;
    let mut held: Vec<IpAddr> = resp.ips.iter().filter_map(|s| spec::parse_cidr(s).map(|(ip, _)| ip)).collect();
    let mut want: Vec<IpAddr> = prev.ips.iter().map(|(ip, _)| *ip).collect();
    held.sort();
    want.sort();
    if held != want {
        return Err(mismatch(format!("the agent holds {held:?} for {handle}, prevResult says {want:?}")));
    }
    log.debug("check passed");
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_ready =
        |details: String| CniError::new(code::PLUGIN_NOT_AVAILABLE, "the Tabby agent is not ready", details);
    match agent_call_within(conf, Op::Status, STATUS_TIMEOUT.min(Duration::from_secs(conf.agent_timeout_seconds))) {
        Ok(r) if r.ready => Ok(()),
        Ok(_) => Err(not_ready(format!("socket {}: agent reports not ready", conf.agent_socket))),
        Err(e) => Err(not_ready(format!("{}: {}", e.msg, e.details))),
    }
}

fn gc(conf: &NetConf, log: &mut Logger) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "invalid network configuration", "GC needs cni.dev/valid-attachments")
    })?;
    let valid_handles = valid.iter().map(|a| handle_id(&conf.name, &a.container_id)).collect();
    let resp = agent_call(conf, Op::Gc { network: conf.name.clone(), valid_handles })?;
    log.info(&format!("gc released {} address(es)", resp.released));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_errors() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"tabby","log_file_path":""}"#;
        let (rc, out) = run(conf, &env(&[]));
        assert_eq!(rc, 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], code::INVALID_ENV);
        assert_eq!(v["cniVersion"], "1.0.0");
        let (rc, out) = run(conf, &env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]));
        assert_eq!(rc, 1);
        assert!(out.contains("CNI_NETNS"), "{out}");
        let (rc, out) = run(conf, &env(&[("CNI_COMMAND", "VERSION")]));
        assert_eq!(rc, 0);
        assert!(out.contains("1.1.0"), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
        let old = br#"{"cniVersion":"0.3.1","name":"n","type":"tabby","log_file_path":""}"#;
        let (_, out) = run(old, &env(&[("CNI_COMMAND", "VERSION")]));
        assert!(out.starts_with(r#"{"cniVersion":"0.3.1""#), "answered in the configuration's version: {out}");
        const CHECK: &[(&str, &str)] =
            &[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")];
        let (rc, out) = run(old, &env(CHECK));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!((rc, v["code"].as_u64(), v["cniVersion"].as_str()), (1, Some(1), Some("0.3.1")), "{out}");
        let (rc, out) = run(b"garbage", &env(&[("CNI_COMMAND", "VERSION")]));
        assert_eq!((rc, out.contains("supportedVersions")), (0, true));
        let (_, out) = run(conf, &env(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", "novalue")]));
        assert!(out.contains("KEY=VALUE"), "{out}");
    }
}
