//! The agent's side of the CNI socket: one JSON request line, one JSON response line per connection
//! (protocol in tabby_wire::proto, documented in docs/cni.md). The socket is created mode 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tabby_obs::prometheus_client::metrics::counter::Counter;
use tabby_obs::prometheus_client::registry::Registry;
use tabby_wire::code;
use tabby_wire::proto::{self, ErrorBody, Op, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::ipam::allocator::{AllocRequest, ReleaseSel};
use crate::ipam::{Allocator, IpamError};
use crate::policy::gate::Gate;

/// How long ADD waits for the new pod's policy chains (then it answers anyway: until they are in, the
/// pod's interface is unknown to the dispatch maps and its traffic is dropped, never let through).
const POLICY_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// A socket that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// Counters of the socket's work.
#[derive(Clone, Default)]
pub struct Metrics {
    pub adds: Counter,
    pub dels: Counter,
    pub errors: Counter,
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("tabby_cni_adds", "CNI ADD requests answered with addresses", self.adds.clone());
        r.register("tabby_cni_dels", "CNI DEL requests answered", self.dels.clone());
        r.register("tabby_cni_errors", "CNI requests answered with an error", self.errors.clone());
    }
}

/// What the server answers with: the allocator once it is up, readiness, and the pod MTU.
#[derive(Clone)]
pub struct Shared {
    pub allocator: Arc<OnceLock<Allocator>>,
    pub ready: Arc<AtomicBool>,
    /// The pod MTU, as the network pass last found it (the underlay's minus VXLAN's 50 or IPIP's 20).
    pub mtu: watch::Receiver<u32>,
    pub metrics: Metrics,
    /// Network policy's hold: ADD answers once the new pod's chains are in.
    pub policy: Arc<OnceLock<Gate>>,
}

impl Shared {
    pub fn new(mtu: watch::Receiver<u32>, metrics: Metrics) -> Shared {
        Shared { allocator: Arc::default(), ready: Arc::default(), mtu, metrics, policy: Arc::default() }
    }

    /// The pod MTU right now.
    fn pod_mtu(&self) -> u32 {
        *self.mtu.borrow()
    }
}

/// Binds the socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |what, source| ServerError::Io { what, path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the stale socket", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("chmod", e))?;
    Ok(listener)
}

/// Serves connections forever.
pub async fn serve(listener: UnixListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &shared).await {
                        tracing::debug!(error = %e, "CNI connection failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting on the CNI socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn error(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Response {
    Response {
        v: proto::VERSION,
        error: Some(ErrorBody { code, msg: msg.into(), details: details.into() }),
        ..Default::default()
    }
}

fn ipam_error(e: IpamError) -> Response {
    let c = match &e {
        IpamError::Exhausted(_) => code::POOL_EXHAUSTED,
        IpamError::NoPool(_) | IpamError::AddressTaken(..) | IpamError::BadAnnotation(..) => code::AGENT,
        IpamError::Api(_) | IpamError::Conflicts(_) | IpamError::Stopped => code::TRY_AGAIN_LATER,
        IpamError::Invariant(_) => code::INTERNAL,
    };
    let msg = match c {
        code::POOL_EXHAUSTED => "no address available",
        code::TRY_AGAIN_LATER => "IPAM is unavailable; try again later",
        code::INTERNAL => "the agent's IPAM state is inconsistent (a bug: see the agent's log)",
        _ => "IPAM refused the request",
    };
    error(c, msg, e.to_string())
}

async fn handle(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(1 << 20)).read_line(&mut line).await?;
    let resp = answer(&line, shared).await;
    if resp.error.is_some() {
        shared.metrics.errors.inc();
    }
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// The answer to one request line.
pub async fn answer(line: &str, shared: &Shared) -> Response {
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return error(code::DECODE, "the request is not JSON", e.to_string()),
    };
    let version = v.get("v").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if version != u64::from(proto::VERSION) {
        return error(
            code::INCOMPATIBLE_VERSION,
            "unsupported agent protocol version",
            format!("request v{version}; this agent speaks v{}", proto::VERSION),
        );
    }
    let req: Request = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return error(code::DECODE, "the request is not valid", e.to_string()),
    };
    let ready = shared.ready.load(Ordering::Acquire);
    if let Op::Status = req.op {
        return Response { v: proto::VERSION, ready, ..Default::default() };
    }
    let Some(alloc) = shared.allocator.get().filter(|_| ready) else {
        return error(code::TRY_AGAIN_LATER, "the Tabby agent is not ready yet; try again later", "IPAM is starting");
    };
    let ok = Response { v: proto::VERSION, ..Default::default() };
    let fmt = |ips: Vec<(std::net::IpAddr, u8)>| ips.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
    match req.op {
        Op::Add { handle, namespace, pod, .. } => {
            let who = namespace.clone().zip(pod.clone());
            match alloc.allocate(AllocRequest { handle, namespace, pod, ..Default::default() }).await {
                Ok(ips) => {
                    if let (Some(gate), Some((ns, pod))) = (shared.policy.get(), who) {
                        let addrs = ips.iter().map(|(ip, _)| *ip).collect();
                        let (waited, ok) = gate.hold(&ns, &pod, addrs, POLICY_HOLD).await;
                        if ok {
                            tracing::debug!(namespace = %ns, pod = %pod, waited_ms = waited.as_millis() as u64, "policy in place");
                        } else {
                            tracing::warn!(namespace = %ns, pod = %pod, "the pod's policy is not programmed yet; its traffic is dropped until it is");
                        }
                    }
                    shared.metrics.adds.inc();
                    Response { ips: fmt(ips), mtu: Some(shared.pod_mtu()), ..ok }
                }
                Err(e) => ipam_error(e),
            }
        }
        Op::Del { handle } => match alloc.release(ReleaseSel::Handle(handle)).await {
            Ok(n) => {
                shared.metrics.dels.inc();
                Response { released: n, ..ok }
            }
            Err(e) => ipam_error(e),
        },
        Op::Check { handle } => match alloc.held_by(&handle).await {
            Ok(ips) => Response { ips: fmt(ips), ..ok },
            Err(e) => ipam_error(e),
        },
        Op::Gc { network, valid_handles } => {
            match alloc.release(ReleaseSel::NotIn { network, valid: valid_handles.into_iter().collect() }).await {
                Ok(n) => Response { released: n, ..ok },
                Err(e) => ipam_error(e),
            }
        }
        Op::Status => Response { ready, ..ok },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn protocol_errors_and_status() {
        let shared = Shared::new(watch::channel(1500).1, Metrics::default());
        let r = answer("nope", &shared).await;
        assert_eq!(r.error.unwrap().code, code::DECODE);
        let r = answer(r#"{"v":9,"op":"status"}"#, &shared).await;
        assert_eq!(r.error.unwrap().code, code::INCOMPATIBLE_VERSION);
        let r = answer(r#"{"v":1,"op":"status"}"#, &shared).await;
        assert!(r.error.is_none() && !r.ready);
        let r = answer(r#"{"v":1,"op":"del","handle":"n.c"}"#, &shared).await;
        assert_eq!(r.error.unwrap().code, code::TRY_AGAIN_LATER);
        let r = answer(r#"{"v":1,"op":"fly"}"#, &shared).await;
        assert_eq!(r.error.unwrap().code, code::DECODE);
    }
}
