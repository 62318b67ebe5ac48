//! The CNI server's hold: an ADD announces the new pod (its addresses and labels) and waits until a
//! policy pass that includes it has been applied, so the pod is isolated by the policies that select it
//! before its first container runs, and reachable as policy allows as soon as ADD returns.
//!
//! Until its chains are in, the pod's interface is unknown to the dispatch maps and dropped; when policy
//! cannot be programmed at all (the last apply failed), ADD does not wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tabby_api::pod::LeanPod;
use tabby_api::policy::model::Endpoint;
use tokio::sync::{Notify, watch};

/// How long an announced pod is carried before the caches must know it.
const PENDING_FOR: Duration = Duration::from_secs(120);

#[derive(Default)]
struct State {
    next: u64,
    pending: BTreeMap<String, (Endpoint, Instant)>,
}

/// The gate, shared by the CNI server and the policy reconciler.
#[derive(Clone)]
pub struct Gate {
    state: Arc<Mutex<State>>,
    /// (generation applied, whether policy is being programmed at all).
    applied: Arc<watch::Sender<(u64, bool)>>,
    /// Wakes the network pass.
    wake: Arc<Notify>,
    pods: Option<(Store<LeanPod>, Client)>,
    node: String,
}

impl Gate {
    /// A gate that wakes `wake` on an announcement; pods' labels come from `pods` (else the API).
    pub fn new(node: &str, wake: Arc<Notify>, pods: Option<(Store<LeanPod>, Client)>) -> Gate {
        Gate {
            state: Arc::default(),
            applied: Arc::new(watch::channel((0, true)).0),
            wake,
            pods,
            node: node.to_string(),
        }
    }

    /// Announces an endpoint; returns its generation.
    pub fn announce(&self, e: Endpoint) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next += 1;
        s.pending.insert(e.key(), (e, Instant::now()));
        let g = s.next;
        drop(s);
        self.wake.notify_one();
        g
    }

    /// The announced endpoints not yet expired, and the newest generation.
    pub fn pending(&self) -> (Vec<Endpoint>, u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.pending.retain(|_, (_, at)| at.elapsed() < PENDING_FOR);
        (s.pending.values().map(|(e, _)| e.clone()).collect(), s.next)
    }

    /// A pass with everything up to `generation` was applied (`ok`), or failed.
    pub fn applied(&self, generation: u64, ok: bool) {
        self.applied.send_modify(|v| *v = (if ok { generation.max(v.0) } else { v.0 }, ok));
    }

    /// Waits until `generation` is applied; false on timeout or when policy cannot be programmed.
    pub async fn wait(&self, generation: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let done = rx.wait_for(|(g, ok)| *g >= generation || !*ok);
        matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(v)) if v.0 >= generation)
    }

    /// The CNI ADD of pod `namespace/pod` with `ips`: announce it (labels and named ports from its Pod)
    /// and wait for its chains. Returns how long it waited and whether they are in.
    pub async fn hold(
        &self,
        namespace: &str,
        pod: &str,
        ips: Vec<std::net::IpAddr>,
        timeout: Duration,
    ) -> (Duration, bool) {
        let started = Instant::now();
        let object = match &self.pods {
            Some((store, client)) => match store.get(&ObjectRef::new(pod).within(namespace)) {
                Some(p) => Some((*p).clone()),
                None => Api::<LeanPod>::namespaced(client.clone(), namespace).get_opt(pod).await.ok().flatten(),
            },
            None => None,
        };
        let mut e =
            object.as_ref().and_then(|p| tabby_api::policy::cluster::endpoint(p, Some(&ips), None)).unwrap_or_else(
                || Endpoint { namespace: namespace.into(), name: pod.into(), ips: ips.clone(), ..Endpoint::default() },
            );
        e.node = self.node.clone();
        let g = self.announce(e);
        let ok = self.wait(g, timeout).await;
        (started.elapsed(), ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_generation_or_gives_up() {
        let gate = Gate::new("n1", Arc::new(Notify::new()), None);
        let g = gate.announce(Endpoint { namespace: "x".into(), name: "a".into(), ..Endpoint::default() });
        assert_eq!(gate.pending().0.len(), 1);
        assert!(!gate.wait(g, Duration::from_millis(20)).await, "not applied yet");
        let g2 = gate.clone();
        let t = tokio::spawn(async move { g2.wait(g, Duration::from_secs(5)).await });
        gate.applied(g, true);
        assert!(t.await.unwrap());
        // Policy broken: no wait.
        let g3 = gate.announce(Endpoint { namespace: "x".into(), name: "b".into(), ..Endpoint::default() });
        gate.applied(g3, false);
        let started = Instant::now();
        assert!(!gate.wait(g3, Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
