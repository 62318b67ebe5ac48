//! The node's network: the ordered list of reconcilers a pass runs over one snapshot of the facts, the
//! pass loop (watch events, debounced; a resync timer), and shutdown.
//!
//! Order matters only through [`Local`]: the node's addresses and MTU come first, the encapsulations
//! then know where they start from, the Node is annotated with what they found, routes, BGP and NAT
//! follow, then network policy (on the same nftables writer as NAT), and NodeStatus reports everything
//! last.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::watch;

use crate::bgp::Bgp;
use crate::config::Config;
use crate::encap::ipip::Ipip;
use crate::encap::vxlan::Vxlan;
use crate::facts::Facts;
use crate::ipam::Allocator;
use crate::kernel::{Kernel, KernelError};
use crate::nat::Nat;
use crate::node::{Annotations, Identity};
use crate::policy::Policy;
use crate::policy::gate::Gate;
use crate::reconcile::{Local, Slot};
use crate::routes::RouteTable;
use crate::routes::pods::PodRoutes;
use crate::status::{Reporter, Status};

/// A pass this long is logged with its parts (milliseconds per reconciler, desired and apply).
const SLOW_PASS: Duration = Duration::from_millis(200);

/// The reconcilers, in the order a pass runs them.
struct Reconcilers {
    node: Slot<Identity>,
    vxlan: Slot<Vxlan>,
    ipip: Slot<Ipip>,
    annotations: Slot<Annotations>,
    pod_routes: Slot<PodRoutes>,
    bgp: Slot<Bgp>,
    nat: Slot<Nat>,
    policy: Slot<Policy>,
    status: Slot<Status>,
}

impl Reconcilers {
    /// One pass: one snapshot of the facts, the local facts read once, every reconciler in order.
    async fn pass(&mut self, facts: &Facts, kernel: &Kernel) {
        let started = Instant::now();
        let snap = facts.snapshot();
        let mut local = Local::gather(kernel, self.node.r.reach_destinations()).await;
        let took = [
            ("snapshot", started.elapsed()),
            self.node.step(&snap, &mut local).await,
            self.vxlan.step(&snap, &mut local).await,
            self.ipip.step(&snap, &mut local).await,
            self.annotations.step(&snap, &mut local).await,
            self.pod_routes.step(&snap, &mut local).await,
            self.bgp.step(&snap, &mut local).await,
            self.nat.step(&snap, &mut local).await,
            self.policy.step(&snap, &mut local).await,
            self.status.step(&snap, &mut local).await,
        ];
        // A slow pass delays every change behind it: say where the time went.
        let total = started.elapsed();
        if total >= SLOW_PASS {
            let parts: Vec<String> = took
                .iter()
                .map(|(n, d)| (n, d.as_millis()))
                .filter(|(_, ms)| *ms > 0)
                .map(|(n, ms)| format!("{n}={ms}"))
                .collect();
            tracing::info!(elapsed_ms = total.as_millis() as u64, parts = %parts.join(" "), "slow network pass");
        }
    }
}

/// The running network reconciler.
pub struct Network {
    client: Client,
    pub table: RouteTable,
    task: tokio::task::JoinHandle<()>,
    routes_task: tokio::task::JoinHandle<()>,
}

impl Network {
    /// Starts the route writer and the pass loop; the first pass runs before this returns, so the pod
    /// MTU, the tunnel device and the routes exist before the agent reports ready. `alloc` gives VXLAN and
    /// IPIP their tunnel addresses; `mtu` carries the pod MTU to the CNI server.
    pub async fn start(
        client: Client,
        cfg: &Config,
        facts: Facts,
        alloc: Option<Allocator>,
        health: tabby_obs::Health,
        mtu: watch::Sender<u32>,
        gate: Gate,
    ) -> Result<Network, KernelError> {
        crate::routes::write_proto_name(&cfg.paths.protos_file);
        let kernel = Kernel::open()?;
        let table = RouteTable::new();
        if cfg.bgp {
            // Routes the previous agent learned stay until BGP has converged (graceful restart).
            table.hold_remote(Some(Instant::now() + Duration::from_secs(180)));
        }
        let routes_task = tokio::spawn(crate::routes::run(table.clone(), cfg.resync));
        health.set("network", true, false, "starting");
        let node = cfg.node.as_str();
        let nft = Arc::new(Mutex::new(crate::kernel::nft::Nft::default()));
        let policy = Policy::new(nft.clone(), cfg.resync, gate, Some(client.clone()));
        tokio::spawn(crate::policy::counters::run(policy.attribution(), Duration::from_secs(5)));
        tokio::spawn(crate::kernel::nft::verify(nft.clone(), cfg.resync));
        crate::policy::nflog::spawn(policy.attribution());
        let mut r = Reconcilers {
            node: Slot::new(Identity::new(cfg, mtu)),
            vxlan: Slot::new(Vxlan::new(node, kernel.clone(), table.clone(), alloc.clone())),
            ipip: Slot::new(Ipip::new(node, kernel.clone(), alloc.clone(), cfg.bgp)),
            annotations: Slot::new(Annotations::new(client.clone(), node)),
            pod_routes: Slot::new(PodRoutes::new(table.clone())),
            bgp: Slot::new(Bgp::new(cfg.bgp, table.clone(), cfg.hold_time)),
            nat: Slot::new(Nat::new(nft, cfg.resync)),
            policy: Slot::new(policy),
            status: Slot::new(Status::new(
                Reporter::new(client.clone(), node, cfg.heartbeat),
                table.clone(),
                health,
                alloc.is_some(),
            )),
        };
        let started = Instant::now();
        r.pass(&facts, &kernel).await;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "first network pass done");
        let every = cfg.resync.min(Duration::from_secs(5));
        let task = tokio::spawn(async move {
            let mut trimmer = crate::memory::Trimmer::new(Duration::from_secs(2));
            loop {
                tokio::select! {
                    // Debounce bursts of watch events into one pass.
                    _ = facts.changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
                    _ = tokio::time::sleep(every) => {}
                }
                let started = Instant::now();
                r.pass(&facts, &kernel).await;
                tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "network pass");
                trimmer.after_pass();
            }
        });
        Ok(Network { client, table, task, routes_task })
    }

    /// On SIGTERM: when the Installation is being deleted (an uninstall), remove Tabby's host state;
    /// otherwise (a rolling update, a restart) leave routes in place so traffic keeps flowing.
    pub async fn shutdown(self, cfg: &Config) {
        self.task.abort();
        // Nothing may put routes back while (or after) cleaning up.
        self.routes_task.abort();
        let _ = self.routes_task.await;
        if crate::cleanup::uninstalling(&self.client).await {
            tracing::info!("the Installation is being deleted: cleaning up this node");
            match crate::cleanup::cleanup(&cfg.paths).await {
                Ok(r) => tracing::info!(routes = r.routes, links = r.links.len(), nft = r.nft_table, "cleaned up"),
                Err(e) => tracing::warn!(error = %e, "cleanup failed"),
            }
        }
    }
}
