//! Case tables shared by more than one crate's tests, read from `api/tests/cases/`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};
use tabby_api::ipam::block::{self, ATTR_NAMESPACE, ATTR_NODE, ATTR_POD};
use tabby_api::ipam::{AllocationAttribute, IPAMBlock, IPPool, cidr_object_name};

use crate::repo_root;

/// A case file of `api/tests/cases/`, parsed as a list of `T`.
pub fn load<T: for<'de> Deserialize<'de>>(file: &str) -> Vec<T> {
    let path = repo_root().join("api/tests/cases").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One object of the validation table (`installation.yaml`, `ippool.yaml`, …): rejected with an error
/// naming `field`, or, without `field`, accepted. `old` makes it an update of that object.
#[derive(Debug, Clone, Deserialize)]
pub struct ValidationCase {
    pub name: String,
    #[serde(default)]
    pub field: Option<String>,
    pub object: Value,
    #[serde(default)]
    pub old: Option<Value>,
}

/// One case of `leaks.yaml`: blocks with allocations, the cluster's pods and nodes, and which addresses
/// are leaked. `kubectl tabby ipam check` and the agent's garbage collector are both tested against it.
#[derive(Debug, Clone, Deserialize)]
pub struct LeakCase {
    pub name: String,
    #[serde(default = "default_owner")]
    pub owner: Option<String>,
    pub allocations: Vec<CaseAllocation>,
    pub pods: Vec<CasePod>,
    pub nodes: Vec<String>,
    pub leaked: Vec<IpAddr>,
}

fn default_owner() -> Option<String> {
    Some("n1".into())
}

/// An allocated address and its attributes.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseAllocation {
    pub ip: IpAddr,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
}

/// A pod of the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CasePod {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub host_network: bool,
}

fn default_namespace() -> String {
    "default".into()
}

/// The leak table.
pub fn leak_cases() -> Vec<LeakCase> {
    load("leaks.yaml")
}

impl LeakCase {
    /// The pools every case runs in.
    pub fn pools(&self) -> Vec<IPPool> {
        ["10.0.0.0/24", "fd00::/64"]
            .iter()
            .map(|c| {
                serde_json::from_value(json!({
                    "apiVersion": "tabby.dev/v1", "kind": "IPPool",
                    "metadata": {"name": format!("pool-{}", c.replace(['.', ':', '/'], "-"))},
                    "spec": {"cidr": c},
                }))
                .expect("a valid IPPool")
            })
            .collect()
    }

    /// The allocations as blocks: /29 (IPv6 /125) blocks of the pools, owned by `owner`.
    pub fn blocks(&self) -> Vec<IPAMBlock> {
        let mut blocks: BTreeMap<IpNet, IPAMBlock> = BTreeMap::new();
        for a in &self.allocations {
            let (pool, len): (IpNet, u8) = if a.ip.is_ipv6() {
                ("fd00::/64".parse().expect("CIDR"), 125)
            } else {
                ("10.0.0.0/24".parse().expect("CIDR"), 29)
            };
            let cidr = block::block_containing(&pool, len, a.ip)
                .unwrap_or_else(|| panic!("{}: {} outside the pools", self.name, a.ip));
            let b = blocks.entry(cidr).or_insert_with(|| {
                let mut spec = block::new_block(&cidr, self.owner.as_deref().unwrap_or_default());
                if self.owner.is_none() {
                    spec.affinity = None;
                }
                IPAMBlock::new(&cidr_object_name(&cidr.to_string()), spec)
            });
            let mut secondary = BTreeMap::new();
            let namespace = a.namespace.clone().or_else(|| a.pod.as_ref().map(|_| default_namespace()));
            for (k, v) in [(ATTR_NAMESPACE, namespace), (ATTR_POD, a.pod.clone()), (ATTR_NODE, a.node.clone())] {
                if let Some(v) = v {
                    secondary.insert(k.to_string(), v);
                }
            }
            let attr = AllocationAttribute { handle_id: Some(format!("h-{}", a.ip)), secondary };
            let ord = block::ordinal_of(&cidr, a.ip).expect("inside its block");
            assert!(block::assign_ordinal(&mut b.spec, ord, attr), "{}: {} allocated twice", self.name, a.ip);
        }
        blocks.into_values().collect()
    }

    /// The pods as the API would hold them.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .iter()
            .map(|p| {
                let ips: Vec<Value> = p.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
                let mut spec = json!({"containers": [{"name": "c", "image": "pause"}], "hostNetwork": p.host_network});
                if let Some(n) = &p.node {
                    spec["nodeName"] = json!(n);
                }
                let mut status = json!({"phase": p.phase.clone().unwrap_or_else(|| "Running".into())});
                if let Some(first) = p.ips.first() {
                    status["podIP"] = json!(first.to_string());
                    status["podIPs"] = json!(ips);
                }
                serde_json::from_value(json!({
                    "metadata": {"name": p.name, "namespace": p.namespace},
                    "spec": spec,
                    "status": status,
                }))
                .expect("a valid Pod")
            })
            .collect()
    }
}
