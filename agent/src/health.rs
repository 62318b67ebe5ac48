//! Liveness, readiness and metrics on the agent's health port (tabby-obs).

use std::net::SocketAddr;
use std::sync::Arc;

use tabby_obs::prometheus_client::registry::Registry;

use crate::cniserver::Metrics;
use crate::config::Config;

/// Serves `/healthz` (`/liveness`), `/readyz` (`/readiness`) and `/metrics` on the health port of every
/// address (the agent runs on the host network; kubelet probes the node's address).
pub async fn serve(
    cfg: &Config,
    health: tabby_obs::Health,
    metrics: &Metrics,
) -> Result<SocketAddr, tabby_obs::ServeError> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    crate::metrics::register(&mut registry);
    let addr = SocketAddr::from(([0, 0, 0, 0], cfg.health_port));
    let (bound, server) = tabby_obs::serve(addr, health, Arc::new(registry)).await?;
    tokio::spawn(server);
    Ok(bound)
}
