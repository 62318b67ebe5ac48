//! tabby-operator: turns Installation/default into Tabby's running pod network and reports its status.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use kube::Client;
use tabby_obs::{Health, LogFormat};
use tabby_operator::controller::{self, Context, Settings};
use tabby_operator::helmvalues;
use tabby_operator::leader::{LeaderElector, lead};
use tabby_operator::metrics::Metrics;

/// Tabby's operator: reconciles Installation/default (operator.tabby.dev/v1) into the tabby-system
/// namespace, RBAC, the CNI configuration, the tabby-node DaemonSet, IP pools and BGP configuration, and
/// reports progress in Installation.status and TabbyStatus/network.
///
/// Wait for the network with: kubectl wait --for=condition=Available tabbystatus/network
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Take part in leader election on a Lease, so that of several replicas only one writes.
    #[arg(long)]
    leader_elect: bool,
    /// Port of /healthz, /readyz and /metrics (on all addresses; the pod uses the host network).
    #[arg(long, default_value_t = 9098)]
    http_port: u16,
    /// Namespace the operator runs in (its Lease and the Helm values ConfigMap live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = tabby_api::names::OPERATOR_NAMESPACE)]
    namespace: String,
    /// This replica's name in leader election.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image of the node agent when the Installation does not set one.
    #[arg(long, env = "TABBY_AGENT_IMAGE", default_value = concat!("ghcr.io/tabby-dev/tabby:v", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, env = "TABBY_LOG", default_value = "info")]
    log_level: String,
    /// Log format: json (default) or text.
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

// One thread is plenty for an I/O-bound controller, and keeps memory low (one allocator arena).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tabby_obs::init_logging(&args.log_level, if args.log_format == "text" { LogFormat::Text } else { LogFormat::Json });
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client configuration (in-cluster or KUBECONFIG)");
            return std::process::ExitCode::FAILURE;
        }
    };
    let health = Health::new();
    let mut registry = tabby_obs::prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    let addr = SocketAddr::from(([0, 0, 0, 0], args.http_port));
    match tabby_obs::serve(addr, health.clone(), Arc::new(registry)).await {
        Ok((_, server)) => {
            tokio::spawn(server);
        }
        Err(e) => {
            tracing::error!(error = %e, "health and metrics server");
            return std::process::ExitCode::FAILURE;
        }
    }
    // Alive from the start; ready once this replica leads (or immediately without leader election).
    health.set(
        "operator",
        true,
        !args.leader_elect,
        if args.leader_elect { "waiting for the lease" } else { "running" },
    );

    let identity = args.identity.clone().unwrap_or_else(|| format!("tabby-operator-{}", std::process::id()));
    let ctx =
        Arc::new(Context::new(client.clone(), Settings { default_image: args.agent_image.clone() }, metrics.clone()));
    let work = async {
        // Ready once this replica leads: only the leader serves.
        health.set("operator", true, true, "leading");
        metrics.leader.set(1);
        tokio::spawn(helmvalues::run(client.clone(), args.namespace.clone()));
        controller::run(ctx).await;
    };
    let elector =
        args.leader_elect.then(|| LeaderElector::new(client.clone(), &args.namespace, "tabby-operator", &identity));
    let code = tokio::select! {
        result = async {
            match &elector {
                Some(elector) => {
                    tracing::info!(identity, "waiting to lead");
                    lead(elector, work).await
                }
                None => {
                    work.await;
                    Ok(())
                }
            }
        } => match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped leading; exiting so a new leader can take over");
                std::process::ExitCode::FAILURE
            }
        },
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            std::process::ExitCode::SUCCESS
        }
    };
    if let Some(elector) = &elector {
        elector.release().await;
    }
    code
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
