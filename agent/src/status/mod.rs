//! Reporting: the node's `NodeStatus` (conditions Ready, IPAMReady, RoutesReady, BGPReady; BGP peers;
//! owned blocks; route counts; MTU; version; heartbeat), written only when something changed plus a slow
//! heartbeat, and the Node condition NetworkUnavailable=False (reason TabbyIsUp) once the node is ready.
//!
//! [`Status`] is the last reconciler of a pass: it reports what the others found, including the first
//! problem any of them had (RoutesReady=False with its reason and message), and sets the health component
//! `network`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tabby_api::nodestatus::{BgpStatus, NodeStatus, NodeStatusSpec, RouteCounts};

use crate::facts::Snapshot;
use crate::reconcile::{Condition, Local, Outcome, Reconciler};
use crate::routes::RouteTable;

/// Reason of the Node condition NetworkUnavailable=False.
pub const REASON_UP: &str = "TabbyIsUp";

/// What the agent knows about its node, for one status write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub address_v4: Option<String>,
    pub address_v6: Option<String>,
    pub ipam_ready: bool,
    pub routes_ready: bool,
    /// Why routes cannot be programmed (reason, message), e.g. IPIP without the kernel module.
    pub routes_problem: Option<(String, String)>,
    /// `None`: BGP is not running on this node.
    pub bgp: Option<BgpStatus>,
    pub bgp_ready: bool,
    pub blocks: Vec<String>,
    pub routes: RouteCounts,
    pub mtu: u32,
}

impl Facts {
    pub fn ready(&self) -> bool {
        self.ipam_ready && self.routes_ready && self.bgp_ready && self.address_v4.is_some()
    }
}

fn cond(t: &str, ok: bool, reason: &str, msg: &str, since: &str) -> Value {
    json!({"type": t, "status": if ok {"True"} else {"False"}, "reason": reason, "message": msg,
           "lastTransitionTime": since})
}

/// The status object without the heartbeat; `since` gives each condition's last transition time.
pub fn render(f: &Facts, since: &dyn Fn(&str, bool) -> String) -> Value {
    let c =
        |t: &str, ok: bool, yes: &str, no: &str, msg: &str| cond(t, ok, if ok { yes } else { no }, msg, &since(t, ok));
    let bgp_msg = match &f.bgp {
        None => "BGP is not enabled on this node".to_string(),
        Some(b) => format!("{} of {} sessions established", b.peers_established, b.peers_v4.len() + b.peers_v6.len()),
    };
    let mut s = json!({
        "conditions": [
            c("Ready", f.ready(), "TabbyIsUp", "NotReady", if f.ready() { "the pod network works on this node" } else { "see the other conditions" }),
            c("IPAMReady", f.ipam_ready, "BlocksClaimed", "Starting", "IPAM serves the CNI plugin"),
            match &f.routes_problem {
                Some((reason, msg)) => c("RoutesReady", false, "Programmed", reason, msg),
                None => c("RoutesReady", f.routes_ready, "Programmed", "Pending", &format!("{} local, {} remote, {} blackhole", f.routes.local, f.routes.remote, f.routes.blackhole)),
            },
            c("BGPReady", f.bgp_ready, if f.bgp.is_some() { "Established" } else { "NotRequired" }, "SessionsDown", &bgp_msg),
        ],
        "blocks": f.blocks,
        "routes": f.routes,
        "mtu": f.mtu,
        "agentVersion": env!("CARGO_PKG_VERSION"),
    });
    if let Some(a) = &f.address_v4 {
        s["addressV4"] = json!(a);
    }
    if let Some(a) = &f.address_v6 {
        s["addressV6"] = json!(a);
    }
    if let Some(b) = &f.bgp {
        let mut b = serde_json::to_value(b).unwrap_or(Value::Null);
        // `since` moves with every state change; it is reported but does not by itself cause a write.
        s["bgp"] = b.take();
    }
    s
}

/// Writes NodeStatus and the Node condition.
pub struct Reporter {
    client: Client,
    node: String,
    heartbeat: Duration,
    last: Option<Value>,
    last_write: Option<Instant>,
    transitions: BTreeMap<String, (bool, String)>,
    node_ready_written: Option<bool>,
    pub writes: u64,
}

fn strip_since(v: &Value) -> Value {
    let mut v = v.clone();
    for fam in ["peersV4", "peersV6"] {
        if let Some(list) = v.pointer_mut(&format!("/bgp/{fam}")).and_then(Value::as_array_mut) {
            for p in list {
                if let Some(o) = p.as_object_mut() {
                    o.remove("since");
                    o.remove("info");
                }
            }
        }
    }
    v
}

impl Reporter {
    pub fn new(client: Client, node: &str, heartbeat: Duration) -> Reporter {
        Reporter {
            client,
            node: node.into(),
            heartbeat,
            last: None,
            last_write: None,
            transitions: BTreeMap::new(),
            node_ready_written: None,
            writes: 0,
        }
    }

    /// Writes when something changed or the heartbeat is due; updates the metrics fed from `f` either way.
    pub async fn report(&mut self, f: &Facts) -> Result<(), kube::Error> {
        crate::metrics::observe_status(f.bgp.as_ref(), &f.routes);
        self.write(f).await
    }

    async fn write(&mut self, f: &Facts) -> Result<(), kube::Error> {
        let now = tabby_api::nodestatus::timestamp(std::time::SystemTime::now());
        let trans = &mut self.transitions;
        let seen = std::cell::RefCell::new(BTreeMap::new());
        let body = render(f, &|t, ok| {
            let since = match trans.get(t) {
                Some((was, at)) if *was == ok => at.clone(),
                _ => now.clone(),
            };
            seen.borrow_mut().insert(t.to_string(), (ok, since.clone()));
            since
        });
        let changed = self.last.as_ref().map(strip_since) != Some(strip_since(&body));
        let due = self.last_write.is_none_or(|t| t.elapsed() >= self.heartbeat);
        if changed || due {
            let api: Api<NodeStatus> = Api::all(self.client.clone());
            if api.get_opt(&self.node).await?.is_none() {
                let obj = NodeStatus::new(&self.node, NodeStatusSpec { node: self.node.clone() });
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            let mut status = body.clone();
            status["lastHeartbeat"] = json!(now);
            api.patch_status(&self.node, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
            self.transitions.extend(seen.into_inner());
            self.last = Some(body);
            self.last_write = Some(Instant::now());
            self.writes += 1;
        }
        let ready = f.ready();
        if ready && (self.node_ready_written != Some(true) || due) {
            self.set_node_condition(&now).await?;
            self.node_ready_written = Some(true);
        }
        Ok(())
    }

    async fn set_node_condition(&self, now: &str) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": [{
            "type": "NetworkUnavailable", "status": "False", "reason": REASON_UP,
            "message": "Tabby is running on this node", "lastTransitionTime": now, "lastHeartbeatTime": now,
        }]}});
        nodes.patch_status(&self.node, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| ())
    }
}

/// The status reconciler.
pub struct Status {
    reporter: Reporter,
    table: RouteTable,
    health: tabby_obs::Health,
    ipam_ready: bool,
}

impl Status {
    pub fn new(reporter: Reporter, table: RouteTable, health: tabby_obs::Health, ipam_ready: bool) -> Status {
        Status { reporter, table, health, ipam_ready }
    }
}

impl Reconciler for Status {
    const NAME: &'static str = "status";
    type Desired = Facts;

    /// Everything but the route table's counts, which its writer task changes between passes.
    fn desired(&self, facts: &Snapshot, local: &Local) -> Facts {
        let host = format!("host:{}", facts.node);
        let mut blocks: Vec<String> = facts
            .blocks
            .iter()
            .filter(|b| !b.spec.deleted && b.spec.affinity.as_deref() == Some(host.as_str()))
            .map(|b| b.spec.cidr.clone())
            .collect();
        blocks.sort();
        let problem = local.problems.iter().find(|p| p.condition == Condition::Routes);
        Facts {
            address_v4: local.addr_v4.map(|a| a.to_string()),
            address_v6: local.addr_v6.map(|a| a.to_string()),
            ipam_ready: self.ipam_ready,
            routes_ready: false,
            routes_problem: problem.map(|p| (p.reason.to_string(), p.message.clone())),
            bgp: local.bgp.clone(),
            bgp_ready: local.bgp_ready,
            blocks,
            routes: RouteCounts::default(),
            mtu: local.mtu,
        }
    }

    async fn apply(&mut self, want: &Facts, _: &mut Local) -> Outcome {
        let counts = self.table.counts();
        let f = Facts {
            routes_ready: self.table.synced() && want.routes_problem.is_none(),
            routes: RouteCounts {
                local: counts.local as i32,
                remote: counts.remote as i32,
                blackhole: counts.blackhole as i32,
            },
            ..want.clone()
        };
        let ready = f.ready();
        let written = self.reporter.writes;
        let r = self.reporter.report(&f).await;
        let detail = if ready {
            "network programmed".to_string()
        } else if let Some((reason, message)) = &f.routes_problem {
            format!("{reason}: {message}")
        } else if f.address_v4.is_none() {
            "no node address detected".to_string()
        } else {
            "converging".to_string()
        };
        self.health.set("network", true, ready || f.address_v4.is_some() && f.routes_ready, detail);
        match r {
            Ok(()) => Outcome::changed((self.reporter.writes - written) as usize),
            Err(e) => Outcome { error: Some(format!("writing NodeStatus: {e}")), ..Outcome::default() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_every_part_and_render_is_stable() {
        let mut f = Facts {
            address_v4: Some("192.168.1.1/24".into()),
            ipam_ready: true,
            routes_ready: true,
            bgp_ready: true,
            mtu: 1450,
            ..Default::default()
        };
        assert!(f.ready());
        let since = |_: &str, _: bool| "2026-01-01T00:00:00Z".to_string();
        let a = render(&f, &since);
        assert_eq!(a, render(&f, &since));
        assert_eq!(a["conditions"][0]["status"], "True");
        assert_eq!(a["conditions"][3]["reason"], "NotRequired");
        assert_eq!(a["mtu"], 1450);
        f.routes_ready = false;
        let b = render(&f, &since);
        assert_eq!(b["conditions"][0]["status"], "False");
        assert_eq!(b["conditions"][2]["reason"], "Pending");
        f.routes_problem = Some(("IPIPUnavailable".into(), "no ipip module".into()));
        let c = render(&f, &since);
        assert_eq!(c["conditions"][2]["status"], "False");
        assert_eq!(c["conditions"][2]["reason"], "IPIPUnavailable");
        assert_eq!(c["conditions"][2]["message"], "no ipip module");
    }

    #[test]
    fn peer_since_alone_is_not_a_change() {
        let v1 =
            json!({"bgp": {"peersV4": [{"peerIP": "1.1.1.1", "state": "Established", "since": "a", "info": "1"}]}});
        let v2 =
            json!({"bgp": {"peersV4": [{"peerIP": "1.1.1.1", "state": "Established", "since": "b", "info": "2"}]}});
        assert_eq!(strip_since(&v1), strip_since(&v2));
    }
}
