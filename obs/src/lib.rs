//! Observability shared by `tabby-operator` and `tabby-agent`:
//! - [`init_logging`]: JSON logs on stderr through `tracing`, level from a flag or environment.
//! - [`Health`]: named checks that make up liveness and readiness.
//! - [`serve`]: one small HTTP server on a daemon's port for `/healthz` (`/liveness`), `/readyz`
//!   (`/readiness`) and Prometheus `/metrics`.
//!
//! hyper is already in every daemon through kube's client, so serving three read-only paths with it costs
//! nothing extra; prometheus-client is the Prometheus project's own Rust client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use prometheus_client;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default for daemons).
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

/// Sets up `tracing` on stderr. `level` is a filter such as `info` or `tabby_agent=debug,info`;
/// `RUST_LOG` overrides it when set. Calling it twice is harmless (the second call does nothing).
pub fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Maps Calico-style severities (`Error`, `Warning`, `Info`, `Debug`, any case) to a tracing level.
pub fn level_from_severity(severity: &str) -> &'static str {
    match severity.to_ascii_lowercase().as_str() {
        "error" | "fatal" | "panic" => "error",
        "warning" | "warn" => "warn",
        "debug" => "debug",
        "trace" => "trace",
        _ => "info",
    }
}

#[derive(Clone, Debug)]
struct Check {
    live: bool,
    ready: bool,
    detail: String,
}

/// Health of a daemon: each subsystem reports whether it is live and ready; the daemon is live when every
/// check is live and ready when every check is ready (and at least one check exists).
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<String, Check>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the state of one subsystem.
    pub fn set(&self, name: &str, live: bool, ready: bool, detail: impl Into<String>) {
        let mut checks = self.checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        checks.insert(name.to_string(), Check { live, ready, detail: detail.into() });
    }

    /// Whether every subsystem is alive.
    pub fn live(&self) -> bool {
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).values().all(|c| c.live)
    }

    /// Whether every subsystem is ready.
    pub fn ready(&self) -> bool {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        !checks.is_empty() && checks.values().all(|c| c.ready)
    }

    /// One line per subsystem: `name: live ready detail`.
    pub fn report(&self) -> String {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks
            .iter()
            .map(|(name, c)| {
                format!(
                    "{name}: {} {} {}\n",
                    if c.live { "live" } else { "not-live" },
                    if c.ready { "ready" } else { "not-ready" },
                    c.detail
                )
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Binds `addr` and serves health and metrics until the task is dropped. Returns the bound address
/// (useful with port 0) and the serving future.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    registry: Arc<Registry>,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|e| ServeError::Bind(addr, e))?;
    let bound = listener.local_addr().map_err(|e| ServeError::Bind(addr, e))?;
    let server = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let health = health.clone();
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = respond(&req, &health, &registry);
                    async move { Ok::<_, Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    };
    Ok((bound, server))
}

fn respond(req: &Request<Incoming>, health: &Health, registry: &Registry) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match req.uri().path() {
        "/healthz" | "/liveness" => {
            let ok = health.live();
            text(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, health.report())
        }
        "/readyz" | "/readiness" => {
            let ok = health.ready();
            text(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, health.report())
        }
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => Response::builder()
                    .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default(),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let health = Health::new();
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("reconciles", "Reconciles run", counter.clone());
        counter.inc();
        let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), health.clone(), Arc::new(registry)).await.unwrap();
        tokio::spawn(server);

        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"), "no checks yet: not ready");
        health.set("controller", true, false, "starting");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.set("controller", true, true, "synced");
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("controller: live ready synced"), "{ready}");
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("reconciles_total 1"), "{metrics}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn severities() {
        assert_eq!(level_from_severity("Warning"), "warn");
        assert_eq!(level_from_severity("Debug"), "debug");
        assert_eq!(level_from_severity("whatever"), "info");
    }
}
