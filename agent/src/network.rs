//! The node's network (issue 7): wires [`node`](crate::node) (address, MTU), [`routes`](crate::routes)
//! (local, blackhole and remote routes), [`bgpmesh`](crate::bgpmesh), [`vxlan`](crate::encap::vxlan),
//! [`ipip`](crate::encap::ipip), [`nat`](crate::nat) and [`status`](crate::status) to informer caches. One
//! reconcile pass computes every desired state from the caches and local facts and hands it to the
//! subsystems, each of which changes only what differs; passes run on watch events (debounced), and on a
//! resync timer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Secret, SecretKeySelector};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tabby_api::bgp::{BGPConfiguration, BGPConfigurationSpec, BGPPeer};
use tabby_api::installation::Installation;
use tabby_api::ipam::{IPAMBlock, IPPool};
use tabby_api::nodestatus::RouteCounts;
use tabby_api::{agentenv, names};
use tabby_wire::names as wire;
use tokio::sync::Notify;

use crate::bgpmesh::{self, Mesh};
use crate::encap::{self, ipip, vxlan};
use crate::ipam::allocator::Purpose;
use crate::node::{self, Method};
use crate::routes::kernel::Kernel;
use crate::routes::{RouteTable, Source, Target};
use crate::status::{Facts, Reporter};
use crate::{forwarding, nat};
use tabby_api::ipam::block::{ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, addr_at, attribute_at, handle_at};

/// Seconds between full passes (default 30).
pub const ENV_RESYNC: &str = "TABBY_ROUTE_RESYNC_SECONDS";
/// Seconds between NodeStatus heartbeats (default 60).
pub const ENV_HEARTBEAT: &str = "TABBY_STATUS_HEARTBEAT_SECONDS";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error(transparent)]
    Kernel(#[from] crate::routes::kernel::KernelError),
}

/// Settings of the network part of the agent.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub node: String,
    pub bgp: bool,
    pub v4: Method,
    pub v6: Option<Method>,
    /// TABBY_MTU: 0 detects.
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub protos_file: PathBuf,
    pub resync: Duration,
    pub heartbeat: Duration,
}

impl NetConfig {
    pub fn from_env(cfg: &crate::config::Config, env: &dyn Fn(&str) -> Option<String>) -> Result<NetConfig, NetError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let secs = |k: &str, d: u64| get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(d).max(1);
        Ok(NetConfig {
            node: cfg.node.clone(),
            bgp: !get(agentenv::BGP).is_some_and(|v| v.eq_ignore_ascii_case("disabled") || v == "false"),
            v4: Method::parse(&get(agentenv::IP_AUTODETECTION_METHOD).unwrap_or_else(|| "first-found".into()))?,
            v6: get(agentenv::IP6_AUTODETECTION_METHOD).map(|m| Method::parse(&m)).transpose()?,
            mtu: cfg.mtu,
            state_dir: cfg.state_dir.clone(),
            protos_file: get(crate::cleanup::ENV_RT_PROTOS_FILE)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(crate::routes::RT_PROTOS_FILE)),
            resync: Duration::from_secs(secs(ENV_RESYNC, 30)),
            heartbeat: Duration::from_secs(secs(ENV_HEARTBEAT, 60)),
        })
    }
}

fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // Cached without managedFields and kubectl's last-applied copy (see ipam::lean_meta): at 10k pods and
    // 100 nodes that is ~4 MiB of RSS the agent never reads.
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut K| crate::ipam::lean_meta(o.meta_mut())),
    );
    tokio::spawn(async move {
        stream
            .for_each(|ev| {
                if ev.is_ok() {
                    changed.notify_one();
                }
                futures::future::ready(())
            })
            .await
    });
    reader
}

struct Caches {
    nodes: Store<Node>,
    blocks: Store<IPAMBlock>,
    pools: Store<IPPool>,
    bgpconfigs: Store<BGPConfiguration>,
    bgppeers: Store<BGPPeer>,
    secrets: Store<Secret>,
}

fn all<K>(s: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    s.state().iter().map(|a| (**a).clone()).collect()
}

/// The running network reconciler.
pub struct Network {
    client: Client,
    pub table: RouteTable,
    task: tokio::task::JoinHandle<()>,
    routes_task: tokio::task::JoinHandle<()>,
}

impl Network {
    /// Starts watches, the route reconciler and the pass loop. `alloc` gives VXLAN and IPIP their tunnel
    /// addresses.
    pub async fn start(
        client: Client,
        cfg: NetConfig,
        alloc: Option<crate::ipam::Allocator>,
        health: tabby_obs::Health,
    ) -> Result<Network, NetError> {
        let changed = Arc::new(Notify::new());
        let caches = Caches {
            nodes: reflect(Api::<Node>::all(client.clone()), changed.clone()),
            blocks: reflect(Api::<IPAMBlock>::all(client.clone()), changed.clone()),
            pools: reflect(Api::<IPPool>::all(client.clone()), changed.clone()),
            bgpconfigs: reflect(Api::<BGPConfiguration>::all(client.clone()), changed.clone()),
            bgppeers: reflect(Api::<BGPPeer>::all(client.clone()), changed.clone()),
            secrets: reflect(Api::<Secret>::namespaced(client.clone(), names::SYSTEM_NAMESPACE), changed.clone()),
        };
        let _ = caches.nodes.wait_until_ready().await;
        let _ = caches.blocks.wait_until_ready().await;
        let _ = caches.pools.wait_until_ready().await;
        crate::routes::write_proto_name(&cfg.protos_file);
        let kernel = Kernel::open()?;
        let table = RouteTable::new();
        if cfg.bgp {
            // Routes the previous agent learned stay until BGP has converged (graceful restart).
            table.hold_remote(Some(Instant::now() + Duration::from_secs(180)));
        }
        let routes_task = tokio::spawn(crate::routes::run(table.clone(), cfg.resync));
        health.set("network", true, false, "starting");
        let mut pass = Pass {
            cfg,
            client: client.clone(),
            kernel,
            table: table.clone(),
            mesh: Mesh::new(table.clone()),
            alloc,
            reporter: Reporter::new(client.clone(), "", Duration::from_secs(60)),
            nat_last: None,
            vteps: BTreeSet::new(),
            ipip_problem: None,
            forwarding_problem: None,
            addr_v4: None,
            addr_v6: None,
            mtu: 0,
            health,
        };
        pass.reporter = Reporter::new(client.clone(), &pass.cfg.node, pass.cfg.heartbeat);
        // The first pass runs before start returns: the MTU file (which the CNI hands to pods), the tunnel
        // device and the routes exist before the agent reports ready.
        let started = Instant::now();
        pass.run(&caches).await;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "first network pass done");
        let task = tokio::spawn(async move {
            let resync = pass.cfg.resync.min(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = changed.notified() => {
                        // Debounce bursts of watch events into one pass.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ = tokio::time::sleep(resync) => {}
                }
                let started = Instant::now();
                pass.run(&caches).await;
                tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "network pass");
            }
        });
        Ok(Network { client, table, task, routes_task })
    }

    /// On SIGTERM: when the Installation is being deleted (an uninstall), remove Tabby's host state;
    /// otherwise (a rolling update, a restart) leave routes in place so traffic keeps flowing.
    pub async fn shutdown(self, env: &dyn Fn(&str) -> Option<String>) {
        self.task.abort();
        // Nothing may put routes back while (or after) cleaning up.
        self.routes_task.abort();
        let _ = self.routes_task.await;
        if uninstalling(&self.client).await {
            tracing::info!("the Installation is being deleted: cleaning up this node");
            match crate::cleanup::cleanup(env).await {
                Ok(r) => tracing::info!(routes = r.routes, links = r.links.len(), nft = r.nft_table, "cleaned up"),
                Err(e) => tracing::warn!(error = %e, "cleanup failed"),
            }
        }
    }
}

/// True when Installation/default exists with a deletionTimestamp.
pub async fn uninstalling(client: &Client) -> bool {
    match Api::<Installation>::all(client.clone()).get_opt(names::DEFAULT_NAME).await {
        Ok(Some(i)) => i.metadata.deletion_timestamp.is_some(),
        _ => false,
    }
}

/// Desired local routes: every allocation of this node whose pod veth is named from its attributes.
pub fn local_routes(me: &str, blocks: &[IPAMBlock]) -> HashMap<IpNet, Target> {
    let mut out = HashMap::new();
    for b in blocks.iter().filter(|b| !b.spec.deleted) {
        let Ok(cidr) = b.spec.cidr.parse::<IpNet>() else { continue };
        for ord in 0..b.spec.allocations.len() {
            let Some(a) = attribute_at(&b.spec, ord) else { continue };
            if a.secondary.get(ATTR_NODE).map(String::as_str) != Some(me) {
                continue;
            }
            let handle = handle_at(&b.spec, ord).unwrap_or("");
            if wire::is_tunnel_handle(handle) {
                continue;
            }
            let (ns, pod) = (a.secondary.get(ATTR_NAMESPACE), a.secondary.get(ATTR_POD));
            let veth = tabby_wire::attachment_veth(
                ns.map(String::as_str),
                pod.map(String::as_str),
                wire::container_of(handle),
            );
            out.insert(IpNet::from(addr_at(&cidr, ord)), Target::Dev(veth));
        }
    }
    out
}

/// Desired blackholes: the blocks this node owns.
pub fn blackholes(me: &str, blocks: &[IPAMBlock]) -> HashMap<IpNet, Target> {
    let host = format!("host:{me}");
    blocks
        .iter()
        .filter(|b| !b.spec.deleted && b.spec.affinity.as_deref() == Some(host.as_str()))
        .filter_map(|b| b.spec.cidr.parse::<IpNet>().ok())
        .map(|c| (c, Target::Blackhole))
        .collect()
}

struct Pass {
    cfg: NetConfig,
    client: Client,
    kernel: Kernel,
    table: RouteTable,
    mesh: Mesh,
    alloc: Option<crate::ipam::Allocator>,
    reporter: Reporter,
    nat_last: Option<(nat::NatState, Instant)>,
    vteps: BTreeSet<vxlan::Vtep>,
    /// Why IPIP pools cannot be served on this node (reported as RoutesReady=False).
    ipip_problem: Option<String>,
    /// A node-wide forwarding switch that is off (see [`forwarding`]).
    forwarding_problem: Option<String>,
    addr_v4: Option<IpNet>,
    addr_v6: Option<IpNet>,
    mtu: u32,
    health: tabby_obs::Health,
}

impl Pass {
    async fn run(&mut self, c: &Caches) {
        let me = self.cfg.node.clone();
        let nodes = all(&c.nodes);
        let blocks = all(&c.blocks);
        let pools: Vec<IPPool> = all(&c.pools);
        let my_node = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(me.as_str())).cloned();
        let vxlan_on = vxlan::enabled(&pools);
        let ipip_on = ipip::enabled(&pools);

        // Identity and MTU.
        match node::detect(&self.kernel, &self.cfg.v4, false, my_node.as_ref()).await {
            Ok(a) => self.addr_v4 = a,
            Err(e) => tracing::warn!(error = %e, "detecting the IPv4 address"),
        }
        if let Some(m) = &self.cfg.v6 {
            match node::detect(&self.kernel, m, true, my_node.as_ref()).await {
                Ok(a) => self.addr_v6 = a,
                Err(e) => tracing::warn!(error = %e, "detecting the IPv6 address"),
            }
        }
        let mtu = if self.cfg.mtu != 0 {
            self.cfg.mtu
        } else {
            let ifaces = node::interfaces(&self.kernel).await.unwrap_or_default();
            node::pod_mtu(&ifaces, encap::overhead(vxlan_on, ipip_on))
        };
        if mtu != self.mtu {
            let p = self.cfg.state_dir.join("mtu");
            if let Err(e) =
                std::fs::create_dir_all(&self.cfg.state_dir).and_then(|_| std::fs::write(&p, format!("{mtu}\n")))
            {
                tracing::warn!(error = %e, "writing the MTU file");
            }
            self.mtu = mtu;
        }
        let mut ann: BTreeMap<String, Option<String>> = BTreeMap::new();
        ann.insert(node::ANNOTATION_V4.into(), self.addr_v4.map(|a| a.to_string()));
        ann.insert(node::ANNOTATION_V6.into(), self.addr_v6.map(|a| a.to_string()));

        // VXLAN device and tunnel address.
        let vxlan_started = Instant::now();
        let mut vxlan_ok = true;
        if vxlan_on {
            if let (Some(IpAddr::V4(local)), Some(alloc)) = (self.addr_v4.map(|a| a.addr()), &self.alloc)
                && let Ok(t) = tunnel_address(alloc, &wire::vxlan_tunnel_handle(&me), Purpose::VxlanTunnel).await
            {
                let dev_mtu =
                    node::pod_mtu(&node::interfaces(&self.kernel).await.unwrap_or_default(), encap::VXLAN_OVERHEAD_V4);
                match vxlan::ensure_device(&self.kernel, local, t, dev_mtu).await {
                    Ok(mac) => {
                        ann.insert(node::ANNOTATION_VXLAN_ADDR.into(), Some(t.to_string()));
                        ann.insert(node::ANNOTATION_VXLAN_MAC.into(), Some(vxlan::format_mac(&mac)));
                    }
                    Err(e) => {
                        vxlan_ok = false;
                        tracing::warn!(error = %e, "creating vxlan.tabby");
                    }
                }
            }
        } else if !self.vteps.is_empty() || vxlan::delete_device(&self.kernel).await.unwrap_or(false) {
            self.vteps.clear();
        }
        if !vxlan_on {
            ann.insert(node::ANNOTATION_VXLAN_ADDR.into(), None);
            ann.insert(node::ANNOTATION_VXLAN_MAC.into(), None);
            release_tunnel_address(self.alloc.as_ref(), &wire::vxlan_tunnel_handle(&me)).await;
        }

        // IPIP device and tunnel address; the routes come from BGP (see the encapsulation rules below).
        let ipip_started = Instant::now();
        let ipip_problem = if ipip_on { self.ipip_device(&me, &mut ann).await } else { None };
        if !ipip_on {
            ann.insert(ipip::ANNOTATION_ADDR.into(), None);
            match ipip::clear_device(&self.kernel).await {
                Ok(true) => tracing::info!("no IPIP pool: tunl0 taken out of service"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "clearing tunl0"),
            }
            release_tunnel_address(self.alloc.as_ref(), &wire::ipip_tunnel_handle(&me)).await;
        }
        if ipip_problem != self.ipip_problem {
            match &ipip_problem {
                Some(p) => tracing::error!(problem = %p, "IPIP pools cannot be served on this node"),
                None if ipip_on => tracing::info!("IPIP ready: tunl0 is up"),
                None => {}
            }
            self.ipip_problem = ipip_problem;
        }
        self.mesh.set_encap(ipip::Encap::new(&pools, self.addr_v4)).await;
        crate::metrics::reconcile_done("ipip", ipip_started.elapsed(), self.ipip_problem.is_none());
        // Whether the node forwards what arrives for its pods (reported, never changed: see forwarding).
        let v6_pods = pools.iter().any(|p| !p.spec.disabled && p.spec.cidr.contains(':'));
        let forwarding_problem = forwarding::check(v6_pods);
        if forwarding_problem != self.forwarding_problem {
            match &forwarding_problem {
                Some(p) => tracing::error!(problem = %p, "this node does not forward pod traffic"),
                None if self.forwarding_problem.is_some() => tracing::info!("forwarding is on again"),
                None => {}
            }
            self.forwarding_problem = forwarding_problem;
        }
        if let Some(n) = &my_node {
            self.publish(n, &ann).await;
        }

        // Routes.
        self.table.set(Source::Local, local_routes(&me, &blocks));
        self.table.set(Source::Blackhole, blackholes(&me, &blocks));
        let vx = vxlan::desired(&me, self.addr_v4, &nodes, &blocks, &pools);
        self.table.set(Source::Tunnel, vx.routes);
        if vxlan_on {
            match vxlan::program_vteps(&self.kernel, &vx.vteps).await {
                Ok(()) => self.vteps = vx.vteps,
                Err(e) => {
                    vxlan_ok = false;
                    tracing::warn!(error = %e, "programming VXLAN neighbours");
                }
            }
        }
        crate::metrics::reconcile_done("vxlan", vxlan_started.elapsed(), vxlan_ok);

        // BGP.
        let bgp_cfg: BGPConfigurationSpec = c
            .bgpconfigs
            .state()
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(names::DEFAULT_NAME))
            .map(|b| b.spec.clone())
            .unwrap_or_default();
        if self.cfg.bgp {
            let peers = all(&c.bgppeers);
            let secrets = &c.secrets;
            let secret = |s: &SecretKeySelector| -> Option<String> {
                let sec = secrets.state().into_iter().find(|x| x.metadata.name.as_deref() == Some(s.name.as_str()))?;
                let v = sec.data.as_ref()?.get(&s.key)?;
                String::from_utf8(v.0.clone()).ok()
            };
            let plan = bgpmesh::plan(&me, &nodes, &bgp_cfg, &peers, &secret);
            let adverts = bgpmesh::advertisements(&me, &blocks, &pools, &bgp_cfg);
            self.mesh.apply(plan, &adverts).await;
        } else {
            self.table.hold_remote(None);
        }

        // NAT outgoing: on change, and re-checked every resync.
        let want = nat::desired(&pools);
        let recheck = self.nat_last.as_ref().is_none_or(|(w, at)| *w != want || at.elapsed() >= self.cfg.resync);
        if recheck {
            let w = want.clone();
            match tokio::task::spawn_blocking(move || nat::reconcile(&w)).await {
                Ok(Ok(changed)) => {
                    if changed {
                        tracing::info!("nftables table tabby updated");
                    }
                    self.nat_last = Some((want, Instant::now()));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "programming NAT outgoing"),
                Err(e) => tracing::warn!(error = %e, "NAT task"),
            }
        }

        // Status.
        let counts = self.table.counts();
        let host = format!("host:{me}");
        let mut owned: Vec<String> = blocks
            .iter()
            .filter(|b| !b.spec.deleted && b.spec.affinity.as_deref() == Some(host.as_str()))
            .map(|b| b.spec.cidr.clone())
            .collect();
        owned.sort();
        let ipam_ready = self.alloc.is_some();
        let facts = Facts {
            address_v4: self.addr_v4.map(|a| a.to_string()),
            address_v6: self.addr_v6.map(|a| a.to_string()),
            ipam_ready,
            routes_ready: self.table.synced() && self.ipip_problem.is_none() && self.forwarding_problem.is_none(),
            routes_problem: self
                .ipip_problem
                .clone()
                .map(|m| (ipip::REASON_UNAVAILABLE.to_string(), m))
                .or_else(|| self.forwarding_problem.clone().map(|m| (forwarding::REASON.to_string(), m))),
            bgp: if self.cfg.bgp { self.mesh.status() } else { None },
            bgp_ready: !self.cfg.bgp || self.mesh.ready(),
            blocks: owned,
            routes: RouteCounts {
                local: counts.local as i32,
                remote: counts.remote as i32,
                blackhole: counts.blackhole as i32,
            },
            mtu: self.mtu,
        };
        let ready = facts.ready();
        if let Err(e) = self.reporter.report(&facts).await {
            tracing::debug!(error = %e, "writing NodeStatus");
        }
        let detail = if ready {
            "network programmed".to_string()
        } else if let Some(p) = &self.ipip_problem {
            format!("IPIP unavailable: {p}")
        } else if let Some(p) = &self.forwarding_problem {
            format!("forwarding disabled: {p}")
        } else if facts.address_v4.is_none() {
            "no node address detected".to_string()
        } else {
            "converging".to_string()
        };
        self.health.set("network", true, ready || facts.address_v4.is_some() && facts.routes_ready, detail);
    }

    /// Brings up tunl0 with this node's IPIP tunnel address; returns why IPIP cannot work, if it cannot.
    async fn ipip_device(&self, me: &str, ann: &mut BTreeMap<String, Option<String>>) -> Option<String> {
        ann.insert(ipip::ANNOTATION_ADDR.into(), None);
        if !self.cfg.bgp {
            return Some("IPIP routes are learned over BGP, which is disabled on this node (TABBY_BGP)".into());
        }
        let alloc = self.alloc.as_ref()?;
        let t = match tunnel_address(alloc, &wire::ipip_tunnel_handle(me), Purpose::IpipTunnel).await {
            Ok(t) => t,
            Err(why) => return Some(why),
        };
        let ifaces = node::interfaces(&self.kernel).await.unwrap_or_default();
        match ipip::ensure_device(&self.kernel, t, node::pod_mtu(&ifaces, encap::IPIP_OVERHEAD)).await {
            Ok(()) => {
                ann.insert(ipip::ANNOTATION_ADDR.into(), Some(t.to_string()));
                None
            }
            Err(e @ ipip::IpipError::NoModule) => Some(e.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "setting up tunl0");
                Some(format!("setting up tunl0: {e}"))
            }
        }
    }

    /// Publishes the node's addresses and VTEP on its Node (only what differs).
    async fn publish(&self, n: &Node, want: &BTreeMap<String, Option<String>>) {
        let have = n.metadata.annotations.clone().unwrap_or_default();
        let diff: serde_json::Map<String, serde_json::Value> = want
            .iter()
            .filter(|(k, v)| have.get(*k) != v.as_ref())
            .map(|(k, v)| (k.clone(), v.clone().map_or(serde_json::Value::Null, serde_json::Value::String)))
            .collect();
        if diff.is_empty() {
            return;
        }
        let patch = serde_json::json!({"metadata": {"annotations": diff}});
        let api: Api<Node> = Api::all(self.client.clone());
        if let Err(e) = api.patch(&self.cfg.node, &PatchParams::default(), &Patch::Merge(patch)).await {
            tracing::warn!(error = %e, "annotating the Node");
        }
    }
}

/// The IPv4 tunnel address of `handle`, allocated on first use from a pool of the tunnel's encapsulation.
async fn tunnel_address(
    alloc: &crate::ipam::Allocator,
    handle: &str,
    purpose: Purpose,
) -> Result<std::net::Ipv4Addr, String> {
    let what = if purpose == Purpose::IpipTunnel { "IPIP" } else { "VXLAN" };
    let v4 = |v: Vec<crate::ipam::allocator::Granted>| {
        v.into_iter().find_map(|(ip, _)| match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    };
    if let Some(a) = alloc.addresses_of(handle).and_then(v4) {
        return Ok(a);
    }
    let req = crate::ipam::allocator::AllocRequest { handle: handle.to_string(), purpose, ..Default::default() };
    let why = match alloc.allocate(req).await {
        Ok(v) => match v4(v) {
            Some(a) => return Ok(a),
            None => "IPAM granted no IPv4 address".to_string(),
        },
        Err(e) => e.to_string(),
    };
    tracing::warn!(error = %why, "allocating the {what} tunnel address");
    Err(format!("allocating the {what} tunnel address: {why}"))
}

/// Releases a tunnel address whose encapsulation is no longer used (Calico does the same).
async fn release_tunnel_address(alloc: Option<&crate::ipam::Allocator>, handle: &str) {
    let Some(alloc) = alloc else { return };
    if alloc.addresses_of(handle).is_some_and(|v| !v.is_empty()) {
        let sel = crate::ipam::allocator::ReleaseSel::Handle(handle.to_string());
        match alloc.release(sel).await {
            Ok(n) => tracing::info!(handle, released = n, "released the tunnel address"),
            Err(e) => tracing::warn!(handle, error = %e, "releasing the tunnel address"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_api::ipam::{AllocationAttribute, IPAMBlockSpec};

    #[test]
    fn local_routes_name_the_pod_veth_and_blackholes_cover_owned_blocks() {
        let mut b = IPAMBlock::new(
            "b",
            IPAMBlockSpec { cidr: "10.0.0.0/30".into(), affinity: Some("host:a".into()), ..Default::default() },
        );
        b.spec.allocations = vec![Some(0), Some(1), Some(2), None];
        let attr = |h: &str, node: &str, pod: Option<(&str, &str)>| {
            let mut s: BTreeMap<String, String> = [(ATTR_NODE.to_string(), node.to_string())].into();
            if let Some((ns, p)) = pod {
                s.insert(ATTR_NAMESPACE.into(), ns.into());
                s.insert(ATTR_POD.into(), p.into());
            }
            AllocationAttribute { handle_id: Some(h.into()), secondary: s }
        };
        b.spec.attributes = vec![
            attr("k8s-pod-network.c1", "a", Some(("default", "web"))),
            attr("k8s-pod-network.c2", "a", None),
            attr("vxlan-tunnel-addr-a", "a", None),
        ];
        b.spec.allocations[3] = Some(3);
        b.spec.attributes.push(attr("ipip-tunnel-addr-a", "a", None));
        let r = local_routes("a", std::slice::from_ref(&b));
        assert_eq!(r.len(), 2);
        assert_eq!(r[&"10.0.0.0/32".parse::<IpNet>().unwrap()], Target::Dev(tabby_wire::veth_name("default", "web")));
        assert_eq!(r[&"10.0.0.1/32".parse::<IpNet>().unwrap()], Target::Dev(tabby_wire::veth_name("", "c2")));
        assert!(local_routes("b", std::slice::from_ref(&b)).is_empty());
        assert_eq!(blackholes("a", std::slice::from_ref(&b)).len(), 1);
        assert!(blackholes("b", &[b]).is_empty());
    }
}
