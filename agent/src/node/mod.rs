//! This node's identity: its name (NODENAME), its addresses by the Installation's autodetection method
//! (Calico's syntax, [`Method`]), the pod MTU, and the Node annotations other agents read.
//!
//! Two reconcilers: [`Identity`] (first in a pass: the addresses and the pod MTU, which it hands to the
//! CNI server in memory and writes to the state directory), and [`Annotations`] (after the
//! encapsulations: publishes what the pass found on the Node, only what differs).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{Config, Method, Paths};
use crate::encap::{self, ipip, vxlan};
use crate::facts::Snapshot;
use crate::kernel;
pub use crate::kernel::Iface;
use crate::reconcile::{Local, Outcome, Reconciler, Removed, TeardownError};

pub use crate::facts::{ANNOTATION_V4, ANNOTATION_V6};

fn usable(a: &IpNet, v6: bool) -> bool {
    match a.addr() {
        IpAddr::V4(x) => !v6 && !x.is_loopback() && !x.is_link_local(),
        IpAddr::V6(x) => v6 && !x.is_loopback() && !x.is_unicast_link_local(),
    }
}

/// Picks the node address of one family among `ifaces` (sorted by index). `internal_ip` is the Node's
/// InternalIP, `reach_src` the source address the kernel picks towards a can-reach destination.
pub fn select(
    method: &Method,
    ifaces: &[Iface],
    v6: bool,
    internal_ip: Option<IpAddr>,
    reach_src: Option<IpAddr>,
) -> Option<IpNet> {
    let skip = kernel::not_uplink();
    let with_addr = |pred: &dyn Fn(&Iface) -> bool| -> Option<IpNet> {
        ifaces.iter().filter(|i| i.up && pred(i)).find_map(|i| i.addrs.iter().find(|a| usable(a, v6)).copied())
    };
    let owning = |ip: IpAddr| ifaces.iter().flat_map(|i| i.addrs.iter()).find(|a| a.addr() == ip).copied();
    match method {
        Method::None => None,
        Method::FirstFound => with_addr(&|i| !skip.is_match(&i.name)),
        Method::Interface(re) => with_addr(&|i| re.is_match(&i.name)),
        Method::SkipInterface(re) => with_addr(&|i| !re.is_match(&i.name) && !skip.is_match(&i.name)),
        Method::Cidrs(cidrs) => ifaces
            .iter()
            .filter(|i| i.up)
            .flat_map(|i| i.addrs.iter())
            .find(|a| usable(a, v6) && cidrs.iter().any(|c| c.contains(&a.addr())))
            .copied(),
        Method::KubernetesInternalIp => {
            let ip = internal_ip.filter(|ip| ip.is_ipv6() == v6)?;
            Some(owning(ip).unwrap_or_else(|| IpNet::from(ip)))
        }
        Method::CanReach(_) => {
            let ip = reach_src.filter(|ip| ip.is_ipv6() == v6)?;
            Some(owning(ip).unwrap_or_else(|| IpNet::from(ip)))
        }
    }
}

/// The pod MTU: the smallest MTU of the up underlay interfaces (1500 if none) minus `overhead`.
pub fn pod_mtu(ifaces: &[Iface], overhead: u32) -> u32 {
    kernel::underlay_mtu(ifaces).saturating_sub(overhead)
}

/// The Node's InternalIP of the family.
pub fn internal_ip(node: &Node, v6: bool) -> Option<IpAddr> {
    node.status.as_ref()?.addresses.as_ref()?.iter().find_map(|a| {
        (a.type_ == "InternalIP").then(|| a.address.parse::<IpAddr>().ok()).flatten().filter(|ip| ip.is_ipv6() == v6)
    })
}

/// The pod MTU when nothing else is known yet: the configured one, else the MTU of the interface
/// holding the IPv4 default route, else 1500.
pub fn default_route_mtu(configured: u32) -> u32 {
    if configured != 0 {
        return configured;
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    iface
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500)
}

/// The node's addresses and the pod MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub v4: Option<IpNet>,
    pub v6: Option<IpNet>,
    pub mtu: u32,
}

/// The identity reconciler.
pub struct Identity {
    v4: Method,
    v6: Option<Method>,
    /// `TABBY_MTU` (0: detect).
    mtu: u32,
    paths: Paths,
    /// The CNI server's pod MTU.
    mtu_tx: watch::Sender<u32>,
    /// What the last pass found (kept while the interfaces cannot be read).
    last: Found,
}

impl Identity {
    pub fn new(cfg: &Config, mtu_tx: watch::Sender<u32>) -> Identity {
        let last = Found { v4: None, v6: None, mtu: 0 };
        Identity { v4: cfg.v4.clone(), v6: cfg.v6.clone(), mtu: cfg.mtu, paths: cfg.paths.clone(), mtu_tx, last }
    }

    /// For cleanup: only the paths.
    pub fn for_teardown(paths: &Paths) -> Identity {
        let (mtu_tx, _) = watch::channel(0);
        let last = Found { v4: None, v6: None, mtu: 0 };
        Identity { v4: Method::None, v6: None, mtu: 0, paths: paths.clone(), mtu_tx, last }
    }

    /// The methods that need the kernel's source address towards a destination (`can-reach`).
    pub fn reach_destinations(&self) -> (Option<&str>, Option<&str>) {
        fn dest(m: Option<&Method>) -> Option<&str> {
            match m {
                Some(Method::CanReach(d)) => Some(d.as_str()),
                _ => None,
            }
        }
        (dest(Some(&self.v4)), dest(self.v6.as_ref()))
    }
}

impl Reconciler for Identity {
    const NAME: &'static str = "node";
    /// `None` while the interfaces cannot be read.
    type Desired = Option<Found>;

    fn desired(&self, facts: &Snapshot, local: &Local) -> Option<Found> {
        if local.ifaces_error.is_some() {
            return None;
        }
        let me = facts.my_node();
        let detect =
            |m: &Method, v6: bool, reach| select(m, &local.ifaces, v6, me.and_then(|n| internal_ip(n, v6)), reach);
        let overhead = encap::overhead(vxlan::enabled(&facts.pools), ipip::enabled(&facts.pools));
        Some(Found {
            v4: detect(&self.v4, false, local.reach.0),
            v6: self.v6.as_ref().and_then(|m| detect(m, true, local.reach.1)),
            mtu: if self.mtu != 0 { self.mtu } else { pod_mtu(&local.ifaces, overhead) },
        })
    }

    async fn apply(&mut self, want: &Option<Found>, local: &mut Local) -> Outcome {
        let found = want.unwrap_or(self.last);
        let mut out = Outcome::default();
        if want.is_none() {
            out.error = local.ifaces_error.clone().map(|e| format!("reading the interfaces: {e}"));
        }
        if found.mtu != self.last.mtu && found.mtu != 0 {
            self.mtu_tx.send_replace(found.mtu);
            let (dir, file) = (&self.paths.state_dir, &self.paths.state_files()[0]);
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(file, format!("{}\n", found.mtu)))
            {
                tracing::warn!(error = %e, "writing the MTU file");
            }
            out.changes += 1;
        }
        if (found.v4, found.v6) != (self.last.v4, self.last.v6) {
            tracing::info!(v4 = ?found.v4, v6 = ?found.v6, "node addresses");
            out.changes += 1;
        }
        self.last = found;
        (local.addr_v4, local.addr_v6, local.mtu) = (found.v4, found.v6, found.mtu);
        local.annotations.insert(ANNOTATION_V4.into(), found.v4.map(|a| a.to_string()));
        local.annotations.insert(ANNOTATION_V6.into(), found.v6.map(|a| a.to_string()));
        out
    }

    /// The state files and the route protocol's name.
    async fn teardown(&mut self) -> Result<Removed, TeardownError> {
        let mut removed = Removed::default();
        for f in self.paths.state_files().into_iter().chain([self.paths.protos_file.clone()]) {
            if remove_file(&f).map_err(|e| TeardownError::new(Self::NAME, e))? {
                removed.files.push(f);
            }
        }
        Ok(removed)
    }
}

/// Removes `p`; whether it was there.
pub fn remove_file(p: &std::path::Path) -> Result<bool, String> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("removing {}: {e}", p.display())),
    }
}

/// The annotations to change on a Node that has `have` so that it has `want` (`null` removes one).
pub fn annotation_patch(
    have: Option<&BTreeMap<String, String>>,
    want: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Value> {
    want.iter()
        .filter(|(k, v)| have.and_then(|h| h.get(*k)) != v.as_ref())
        .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
        .collect()
}

/// Publishes what the pass found on this node's Node (addresses, tunnel addresses, VTEP MAC).
pub struct Annotations {
    client: Client,
    node: String,
}

impl Annotations {
    pub fn new(client: Client, node: &str) -> Annotations {
        Annotations { client, node: node.to_string() }
    }
}

impl Reconciler for Annotations {
    const NAME: &'static str = "annotations";
    type Desired = BTreeMap<String, Value>;

    fn desired(&self, facts: &Snapshot, local: &Local) -> BTreeMap<String, Value> {
        match facts.my_node() {
            Some(n) => annotation_patch(n.metadata.annotations.as_ref(), &local.annotations),
            None => BTreeMap::new(),
        }
    }

    async fn apply(&mut self, patch: &BTreeMap<String, Value>, _: &mut Local) -> Outcome {
        if patch.is_empty() {
            return Outcome::default();
        }
        let body = serde_json::json!({"metadata": {"annotations": patch}});
        let api: Api<Node> = Api::all(self.client.clone());
        match api.patch(&self.node, &PatchParams::default(), &Patch::Merge(body)).await {
            Ok(_) => Outcome::changed(patch.len()),
            Err(e) => Outcome { error: Some(format!("annotating the Node: {e}")), ..Outcome::default() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, name: &str, mtu: u32, addrs: &[&str]) -> Iface {
        Iface { index, name: name.into(), up: true, mtu, addrs: addrs.iter().map(|a| a.parse().unwrap()).collect() }
    }

    fn ifaces() -> Vec<Iface> {
        vec![
            iface(1, "lo", 65536, &["127.0.0.1/8", "::1/128"]),
            iface(2, "docker0", 1500, &["172.17.0.1/16"]),
            iface(3, "eth0", 9000, &["10.1.0.5/24", "fd00::5/64", "fe80::1/64"]),
            iface(4, "eth1", 1500, &["192.168.100.2/24"]),
            iface(5, "tby0123456789ab", 1450, &[]),
        ]
    }

    #[test]
    fn selection_by_each_method() {
        let i = ifaces();
        let sel = |m: &str, v6: bool| select(&Method::parse(m).unwrap(), &i, v6, None, None).map(|n| n.to_string());
        assert_eq!(sel("first-found", false).as_deref(), Some("10.1.0.5/24"));
        assert_eq!(sel("first-found", true).as_deref(), Some("fd00::5/64"));
        assert_eq!(sel("interface=eth1", false).as_deref(), Some("192.168.100.2/24"));
        assert_eq!(sel("skip-interface=eth0", false).as_deref(), Some("192.168.100.2/24"));
        assert_eq!(sel("cidr=192.168.0.0/16", false).as_deref(), Some("192.168.100.2/24"));
        assert_eq!(sel("cidr=172.16.0.0/12", false).as_deref(), Some("172.17.0.1/16"));
        assert_eq!(sel("none", false), None);
        let k = select(&Method::KubernetesInternalIp, &i, false, Some("192.168.100.2".parse().unwrap()), None);
        assert_eq!(k.unwrap().to_string(), "192.168.100.2/24");
        let r = select(&Method::CanReach("x".into()), &i, false, None, Some("10.1.0.5".parse().unwrap()));
        assert_eq!(r.unwrap().to_string(), "10.1.0.5/24");
        let mut down = ifaces();
        down[2].up = false;
        assert_eq!(select(&Method::FirstFound, &down, false, None, None).unwrap().to_string(), "192.168.100.2/24");
    }

    #[test]
    fn mtu_is_the_smallest_underlay_minus_overhead() {
        let i = ifaces();
        assert_eq!(pod_mtu(&i, 0), 1500);
        assert_eq!(pod_mtu(&i, encap::VXLAN_OVERHEAD_V4), 1450);
        assert_eq!(pod_mtu(&i[..3], encap::VXLAN_OVERHEAD_V4), 8950);
        assert_eq!(pod_mtu(&[], 0), 1500);
    }

    #[test]
    fn can_reach_uses_the_kernel_source_choice() {
        assert_eq!(kernel::source_towards("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(kernel::source_towards("not an ip"), None);
    }

    #[test]
    fn only_differing_annotations_are_patched() {
        let have: BTreeMap<String, String> = [
            (ANNOTATION_V4.to_string(), "10.1.0.5/24".to_string()),
            (ANNOTATION_V6.to_string(), "fd00::5/64".to_string()),
            ("other".to_string(), "x".to_string()),
        ]
        .into();
        let want: BTreeMap<String, Option<String>> = [
            (ANNOTATION_V4.to_string(), Some("10.1.0.5/24".to_string())),
            (ANNOTATION_V6.to_string(), None),
            (vxlan::ANNOTATION_VXLAN_ADDR.to_string(), None),
            (vxlan::ANNOTATION_VXLAN_MAC.to_string(), Some("66:00:00:00:00:01".to_string())),
        ]
        .into();
        let p = annotation_patch(Some(&have), &want);
        // The address that did not change stays out, and so does removing one the Node does not have.
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[ANNOTATION_V6], Value::Null);
        assert_eq!(p[vxlan::ANNOTATION_VXLAN_MAC], "66:00:00:00:00:01");
        assert!(annotation_patch(Some(&have), &BTreeMap::new()).is_empty());
    }
}
