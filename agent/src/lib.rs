//! `tabby-agent`, the node agent (docs/agent.md, docs/ipam.md). Every subsystem of the node's network is a
//! [`reconcile::Reconciler`] driven by one runner over one view of the API ([`facts`]); IPAM serves the
//! CNI plugin on a socket.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | settings from the environment, read once |
//! | [`facts`] | the one informer set, trimmed, and the snapshot a pass reads |
//! | [`reconcile`] | the reconciler trait and the runner (skip, timing, errors, problems → NodeStatus) |
//! | [`network`] | the ordered list of reconcilers, the pass loop, shutdown |
//! | [`kernel`] | the netlink handle, the interfaces snapshot, the nftables writer |
//! | [`node`] | addresses, pod MTU, Node annotations |
//! | [`encap`] | VXLAN and IPIP |
//! | [`routes`] | the route table, its writer, this node's pod routes and blackholes |
//! | [`bgp`] | peers, advertisements, the speaker |
//! | [`nat`] | NAT outgoing |
//! | [`policy`] | network policy: the model compiled for this node's pods, rendered to nftables; the CNI hold, counters, Log lines |
//! | [`forwarding`] | the node's forwarding switches |
//! | [`status`] | NodeStatus and the Node condition |
//! | [`ipam`] | Calico's block model: allocator, leak release |
//! | [`cniserver`] | the unix socket the `tabby` CNI plugin asks for addresses |
//! | [`installcni`] | the init container that installs the plugin and its conflist |
//! | [`cleanup`] | `tabby-agent cleanup`: every reconciler's teardown |
//! | [`health`], [`metrics`] | liveness, readiness and Prometheus metrics |
//! | [`memory`] | the allocator: one arena, freed pages returned after passes |

pub mod bgp;
pub mod cleanup;
pub mod cniserver;
pub mod config;
pub mod encap;
pub mod facts;
pub mod forwarding;
pub mod health;
pub mod installcni;
pub mod ipam;
pub mod kernel;
pub mod memory;
pub mod metrics;
pub mod nat;
pub mod network;
pub mod node;
pub mod policy;
pub mod reconcile;
pub mod routes;
pub mod status;

use kube::Client;
use tokio::sync::watch;

use crate::config::Config;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Socket(#[from] cniserver::ServerError),
    #[error(transparent)]
    Health(#[from] tabby_obs::ServeError),
    #[error("IPAM: {0}")]
    Ipam(#[from] ipam::IpamError),
    #[error("writing {0}: {1}")]
    State(String, std::io::Error),
}

/// `tabby-agent run`: serves until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    let client = Client::try_default().await?;
    write_nodename(&cfg)?;
    let health = tabby_obs::Health::new();
    health.set("ipam", true, false, "starting");
    let metrics = cniserver::Metrics::default();
    let health_addr = health::serve(&cfg, health.clone(), &metrics).await?;
    let socket = &cfg.paths.socket;
    tracing::info!(node = %cfg.node, %health_addr, socket = %socket.display(), "tabby-agent starting");

    // The socket comes up first so STATUS can say "not ready" while IPAM and the first network pass start.
    // The network pass sets the pod MTU before the agent reports ready; until then, the underlay's.
    let (mtu, mtu_rx) = watch::channel(node::default_route_mtu(cfg.mtu));
    let shared = cniserver::Shared::new(mtu_rx, metrics);
    let listener = cniserver::bind(socket)?;
    tokio::spawn(cniserver::serve(listener, shared.clone()));

    let facts = facts::Facts::start(&client, &cfg.node).await;
    let alloc = ipam::Allocator::start(client.clone(), &cfg.node, facts.clone()).await?;
    if let Err(e) = alloc.preclaim().await {
        tracing::warn!(error = %e, "pre-claiming blocks failed; retrying on the resync");
    }
    let counted = alloc.clone();
    metrics::set_ipam_source(move || ipam::counts(&counted));
    let _ = shared.allocator.set(alloc.clone());
    health.set("ipam", true, true, "serving");
    tracing::info!(blocks = alloc.blocks().len(), "IPAM ready");

    tokio::spawn(ipam::reconcile_blocks(alloc.clone(), facts.pools_changed.clone(), cfg.gc_interval));
    tokio::spawn(ipam::gc::release_local_leaks(alloc.clone(), client.clone(), facts.pods.clone(), cfg.leak_grace));
    if cfg.gc_enabled {
        tokio::spawn(ipam::gc::run_cluster_gc(
            client.clone(),
            cfg.node.clone(),
            cfg.lease_namespace.clone(),
            cfg.gc_interval,
            cfg.leak_grace,
        ));
    }
    let gate = policy::gate::Gate::new(&cfg.node, facts.changed.clone(), Some((facts.pods.clone(), client.clone())));
    let _ = shared.policy.set(gate.clone());
    let net =
        network::Network::start(client.clone(), &cfg, facts, Some(alloc.clone()), health.clone(), mtu, gate).await;
    let net = net.map_err(|e| tracing::error!(error = %e, "the node network did not start")).ok();
    // Ready for the CNI once the first network pass has written the pod MTU (VXLAN/IPIP overhead included).
    shared.ready.store(true, std::sync::atomic::Ordering::Release);
    shutdown_signal().await;
    tracing::info!("stopping");
    if let Some(n) = net {
        n.shutdown(&cfg).await;
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// The node name, for tools on the host (the pod MTU beside it is the network pass's).
fn write_nodename(cfg: &Config) -> Result<(), AgentError> {
    let err = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e| AgentError::State(p, e)
    };
    let [_, n] = cfg.paths.state_files();
    std::fs::create_dir_all(&cfg.paths.state_dir).map_err(err(&cfg.paths.state_dir))?;
    std::fs::write(&n, format!("{}\n", cfg.node)).map_err(err(&n))?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
