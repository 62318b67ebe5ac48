//! `tabby-agent`, the node agent. One module per subsystem; each is a reconciler of one shape (desired
//! state from the API and local facts → diff → minimal change, on events and a resync timer):
//!
//! - [`ipam`]: Calico's block model with group commit, pre-claimed blocks and leak release;
//! - [`cniserver`]: the unix socket the `tabby` CNI plugin asks for addresses;
//! - [`installcni`]: the init container that installs the plugin and its conflist;
//! - [`config`]: settings from the operator's environment ([`tabby_api::agentenv`]);
//! - [`health`]: liveness, readiness and metrics through tabby-obs;
//! - [`metrics`]: the agent's Prometheus metrics (reconciles, BGP peers, routes, IPAM).

pub mod cniserver;
pub mod config;
pub mod health;
pub mod installcni;
pub mod ipam;
pub mod metrics;
// Issue 7: the node's network (routes, BGP, VXLAN, NAT, status, cleanup).
pub mod bgpmesh;
pub mod cleanup;
pub mod encap;
pub mod forwarding;
pub mod nat;
pub mod network;
pub mod node;
pub mod routes;
pub mod status;

use std::sync::Arc;

use kube::Client;
use tokio::sync::Notify;

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
    let mtu = config::detect_mtu(cfg.mtu);
    write_state(&cfg, mtu)?;
    let health = tabby_obs::Health::new();
    health.set("ipam", true, false, "starting");
    let metrics = cniserver::Metrics::default();
    let health_addr = health::serve(&cfg, health.clone(), &metrics).await?;
    tracing::info!(node = %cfg.node, %health_addr, socket = %cfg.socket.display(), mtu, "tabby-agent starting");

    // The socket comes up first so STATUS can say "not ready" while IPAM and the first network pass start.
    let shared = cniserver::Shared { mtu, state_dir: Some(cfg.state_dir.clone()), metrics, ..Default::default() };
    let listener = cniserver::bind(&cfg.socket)?;
    tokio::spawn(cniserver::serve(listener, shared.clone()));

    let pools_changed = Arc::new(Notify::new());
    let caches = ipam::start_caches(&client, &cfg.node, pools_changed.clone()).await;
    let alloc = ipam::Allocator::start(client.clone(), &cfg.node, caches.clone()).await?;
    if let Err(e) = alloc.preclaim().await {
        tracing::warn!(error = %e, "pre-claiming blocks failed; retrying on the resync");
    }
    let counted = alloc.clone();
    metrics::set_ipam_source(move || ipam::counts(&counted));
    let _ = shared.allocator.set(alloc.clone());
    health.set("ipam", true, true, "serving");
    tracing::info!(blocks = alloc.blocks().len(), "IPAM ready");

    tokio::spawn(ipam::reconcile_blocks(alloc.clone(), pools_changed, cfg.gc_interval));
    tokio::spawn(ipam::gc::release_local_leaks(alloc.clone(), client.clone(), caches.pods.clone(), cfg.leak_grace));
    if cfg.gc_enabled {
        tokio::spawn(ipam::gc::run_cluster_gc(
            client.clone(),
            cfg.node.clone(),
            cfg.lease_namespace.clone(),
            cfg.gc_interval,
            cfg.leak_grace,
        ));
    }
    let env = |k: &str| std::env::var(k).ok();
    let net = match network::NetConfig::from_env(&cfg, &env) {
        Ok(nc) => network::Network::start(client.clone(), nc, Some(alloc.clone()), health.clone()).await,
        Err(e) => Err(e),
    };
    let net = net.map_err(|e| tracing::error!(error = %e, "the node network did not start")).ok();
    // Ready for the CNI once the first network pass has written the pod MTU (VXLAN/IPIP overhead included).
    shared.ready.store(true, std::sync::atomic::Ordering::Release);
    shutdown_signal().await;
    tracing::info!("stopping");
    if let Some(n) = net {
        n.shutdown(&env).await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

fn write_state(cfg: &Config, mtu: u32) -> Result<(), AgentError> {
    let err = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e| AgentError::State(p, e)
    };
    std::fs::create_dir_all(&cfg.state_dir).map_err(err(&cfg.state_dir))?;
    let m = cfg.state_dir.join("mtu");
    std::fs::write(&m, format!("{mtu}\n")).map_err(err(&m))?;
    let n = cfg.state_dir.join("nodename");
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
