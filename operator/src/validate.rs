//! Checks of an Installation that need more than one field or the cluster's state, made before anything is
//! written. An invalid Installation is reported (Degraded, reason InvalidConfiguration, the field named)
//! and nothing is applied.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tabby_api::installation::{EnabledDisabled, Encapsulation};
use tabby_api::{IPPool, InstallationSpec};

use crate::computed;

/// Smallest and largest pod MTU accepted.
pub const MTU_RANGE: std::ops::RangeInclusive<i32> = 576..=9000;

/// One problem, with the path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem of the effective Installation `spec`, given the IPPools that exist.
pub fn installation(spec: &InstallationSpec, existing_pools: &[IPPool]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(FieldError { field, message });
    let network = computed::network(spec);
    let bgp = network.bgp.unwrap_or(EnabledDisabled::Enabled);

    if let Some(mtu) = network.mtu
        && !MTU_RANGE.contains(&mtu)
    {
        err("spec.network.mtu".into(), format!("{mtu} is out of range {}-{}", MTU_RANGE.start(), MTU_RANGE.end()));
    }

    let pools = computed::pools(spec);
    let v4_vxlan = pools.iter().any(|p| {
        p.cidr.parse::<IpNet>().is_ok_and(|n| n.addr().is_ipv4())
            && matches!(p.encapsulation, Some(Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet))
    });
    let mut parsed: Vec<(usize, IpNet)> = Vec::new();
    for (i, pool) in pools.iter().enumerate() {
        let at = |f: &str| format!("spec.network.ipPools[{i}].{f}");
        let net = match pool.cidr.parse::<IpNet>() {
            Ok(net) if net.trunc() == net => net,
            Ok(_) => {
                err(
                    at("cidr"),
                    format!(
                        "{} has host bits set; use {}",
                        pool.cidr,
                        pool.cidr.parse::<IpNet>().map(|n| n.trunc().to_string()).unwrap_or_default()
                    ),
                );
                continue;
            }
            Err(_) => {
                err(at("cidr"), format!("{:?} is not a CIDR", pool.cidr));
                continue;
            }
        };
        let v6 = matches!(net, IpNet::V6(_));
        let block = pool.block_size.unwrap_or(if v6 { 122 } else { 26 });
        let range = if v6 { 116..=128 } else { 20..=32 };
        if !range.contains(&block) {
            err(
                at("blockSize"),
                format!(
                    "{block} is out of range {}-{} for an IPv{} pool",
                    range.start(),
                    range.end(),
                    if v6 { 6 } else { 4 }
                ),
            );
        } else if block < i32::from(net.prefix_len()) {
            err(at("blockSize"), format!("/{block} blocks do not fit in {}", pool.cidr));
        }
        let encapsulation = pool.encapsulation.unwrap_or(Encapsulation::None);
        let ipip = matches!(encapsulation, Encapsulation::Ipip | Encapsulation::IpipCrossSubnet);
        let vxlan = matches!(encapsulation, Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet);
        if ipip && v6 {
            err(at("encapsulation"), "IPIP is IPv4 only; use VXLAN or None for an IPv6 pool".into());
        }
        // IPv6 rides the IPv4 tunnel, whose address comes from an IPv4 VXLAN pool.
        if vxlan && v6 && !v4_vxlan {
            err(
                at("encapsulation"),
                "VXLAN for an IPv6 pool needs an IPv4 pool in VXLAN too: the tunnel runs over IPv4".into(),
            );
        }
        if bgp == EnabledDisabled::Disabled && (ipip || encapsulation == Encapsulation::None) {
            err(
                at("encapsulation"),
                format!(
                    "{} needs BGP to share routes, but spec.network.bgp is Disabled; use VXLAN or enable BGP",
                    encapsulation_name(encapsulation)
                ),
            );
        }
        if let Some((j, other)) =
            parsed.iter().find(|(_, other)| other.contains(&net.network()) || net.contains(&other.network()))
        {
            err(at("cidr"), format!("{} overlaps spec.network.ipPools[{j}].cidr {other}", pool.cidr));
        }
        if pools[..i].iter().any(|p| p.name == pool.name) {
            err(at("name"), format!("{:?} is used by another pool", pool.name.as_deref().unwrap_or_default()));
        }
        // Pools are cut into blocks nodes own; changing the range or block size under them is not possible.
        if let Some(existing) = existing_pools.iter().find(|p| p.metadata.name.as_deref() == pool.name.as_deref()) {
            let name = pool.name.as_deref().unwrap_or_default();
            if existing.spec.cidr != pool.cidr {
                err(
                    at("cidr"),
                    format!(
                        "IPPool {name} has cidr {}; a pool's cidr cannot change. Add a new pool with {} (another name) and set the old one's natOutgoing/nodeSelector as needed, then remove it from the Installation to disable it",
                        existing.spec.cidr, pool.cidr
                    ),
                );
            } else if existing.spec.effective_block_size() != block {
                err(
                    at("blockSize"),
                    format!(
                        "IPPool {name} has blockSize {}; a pool's block size cannot change. Add a new pool (another name and cidr) with blockSize {block}, then remove the old one from the Installation to disable it",
                        existing.spec.effective_block_size()
                    ),
                );
            }
        }
        parsed.push((i, net));
    }

    if let Some(rolling) = spec.node_update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref())
        && let Some(max) = &rolling.max_unavailable
    {
        let ok = match max {
            IntOrString::Int(n) => *n >= 1,
            IntOrString::String(s) => {
                s.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (1..=100).contains(&n))
            }
        };
        if !ok {
            err(
                "spec.nodeUpdateStrategy.rollingUpdate.maxUnavailable".into(),
                "must be at least 1 or a percentage from 1% to 100%".into(),
            );
        }
    }

    if let Some(ds) = &spec.agent_daemon_set {
        for (i, env) in ds.env.iter().flatten().enumerate() {
            if env.name.is_empty() || env.name.contains('=') {
                err(
                    format!("spec.agentDaemonSet.env[{i}].name"),
                    format!("{:?} is not a valid variable name", env.name),
                );
            }
        }
    }
    errors
}

fn encapsulation_name(e: Encapsulation) -> &'static str {
    match e {
        Encapsulation::None => "encapsulation None",
        Encapsulation::Vxlan => "VXLAN",
        Encapsulation::VxlanCrossSubnet => "VXLANCrossSubnet",
        Encapsulation::Ipip => "IPIP",
        Encapsulation::IpipCrossSubnet => "IPIPCrossSubnet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::computed::{ClusterDefaults, effective};
    use serde_json::json;

    fn check(spec: serde_json::Value, existing: &[IPPool]) -> Vec<FieldError> {
        let spec: InstallationSpec = serde_json::from_value(spec).unwrap();
        installation(&effective(&spec, &ClusterDefaults::default()), existing)
    }

    fn pool(name: &str, cidr: &str, block: Option<i32>) -> IPPool {
        serde_json::from_value(json!({
            "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": block}
        }))
        .unwrap()
    }

    #[test]
    fn invalid_installations_name_their_field() {
        let existing = [pool("pods", "10.0.0.0/16", None)];
        let table: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "overlapping pools",
                json!({"network": {"ipPools": [{"cidr": "10.0.0.0/16"}, {"cidr": "10.0.128.0/17"}]}}),
                "spec.network.ipPools[1].cidr",
            ),
            (
                "ipip on ipv6",
                json!({"network": {"ipPools": [{"cidr": "fd00::/48", "encapsulation": "IPIP"}]}}),
                "spec.network.ipPools[0].encapsulation",
            ),
            (
                "vxlan on ipv6 without an ipv4 vxlan pool",
                json!({"network": {"ipPools": [{"cidr": "10.0.0.0/16", "encapsulation": "None"}, {"cidr": "fd00::/48", "encapsulation": "VXLANCrossSubnet"}]}}),
                "spec.network.ipPools[1].encapsulation",
            ),
            (
                "ipv6 alone in vxlan",
                json!({"network": {"ipPools": [{"cidr": "fd00::/48", "encapsulation": "VXLAN"}]}}),
                "spec.network.ipPools[0].encapsulation",
            ),
            (
                "ipip without bgp",
                json!({"network": {"bgp": "Disabled", "ipPools": [{"cidr": "10.0.0.0/16", "encapsulation": "IPIPCrossSubnet"}]}}),
                "spec.network.ipPools[0].encapsulation",
            ),
            (
                "native routing without bgp",
                json!({"network": {"bgp": "Disabled", "ipPools": [{"cidr": "10.0.0.0/16", "encapsulation": "None"}]}}),
                "spec.network.ipPools[0].encapsulation",
            ),
            ("mtu too small", json!({"network": {"mtu": 500}}), "spec.network.mtu"),
            ("mtu too large", json!({"network": {"mtu": 9500}}), "spec.network.mtu"),
            (
                "cidr change",
                json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.1.0.0/16"}]}}),
                "spec.network.ipPools[0].cidr",
            ),
            (
                "block size change",
                json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.0.0.0/16", "blockSize": 28}]}}),
                "spec.network.ipPools[0].blockSize",
            ),
            (
                "block larger than pool",
                json!({"network": {"ipPools": [{"cidr": "10.0.0.0/28", "blockSize": 26}]}}),
                "spec.network.ipPools[0].blockSize",
            ),
            ("host bits", json!({"network": {"ipPools": [{"cidr": "10.0.0.1/16"}]}}), "spec.network.ipPools[0].cidr"),
            (
                "duplicate names",
                json!({"network": {"ipPools": [{"name": "a", "cidr": "10.0.0.0/16"}, {"name": "a", "cidr": "10.1.0.0/16"}]}}),
                "spec.network.ipPools[1].name",
            ),
            (
                "max unavailable zero",
                json!({"nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": 0}}}),
                "spec.nodeUpdateStrategy.rollingUpdate.maxUnavailable",
            ),
            (
                "bad env name",
                json!({"agentDaemonSet": {"env": [{"name": "A=B", "value": "x"}]}}),
                "spec.agentDaemonSet.env[0].name",
            ),
        ];
        for (what, spec, field) in table {
            let errors = check(spec, &existing);
            assert!(errors.iter().any(|e| e.field == field), "{what}: expected an error on {field}, got {errors:?}");
        }
    }

    #[test]
    fn valid_installations_pass() {
        let existing = [pool("pods", "10.0.0.0/16", Some(26))];
        for spec in [
            json!({}),
            json!({"network": {"ipPools": []}}),
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.0.0.0/16", "natOutgoing": "Disabled"}]}}),
            json!({"network": {"bgp": "Disabled", "mtu": 1450, "ipPools": [{"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"}]}}),
            json!({"network": {"ipPools": [{"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"}, {"cidr": "fd00::/48", "encapsulation": "None"}]}}),
            json!({"network": {"bgp": "Disabled", "ipPools": [{"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"}, {"cidr": "fd00::/48", "encapsulation": "VXLANCrossSubnet"}]}}),
            json!({"nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": "25%"}}}),
        ] {
            assert_eq!(check(spec.clone(), &existing), vec![], "{spec}");
        }
    }
}
