//! The effective Installation: the user's spec with every default filled in. It is what the operator
//! renders from and what it reports in `status.computed`; it is never written into the user's spec.

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tabby_api::InstallationSpec;
use tabby_api::installation::{
    CniSpec, EnabledDisabled, Encapsulation, InstallationIPPool, LinuxDataplane, LogSeverity, Logging, NetworkSpec,
    NodeAddressAutodetection, NodeUpdateStrategy, RollingUpdate, UpdateStrategyType,
};
use tabby_api::ipam::{ALL_NODES, DEFAULT_BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V6};
use tabby_api::names::{DEFAULT_CNI_BIN_DIR, DEFAULT_CNI_CONF_DIR};

/// The pool CIDR used when the Installation names none and the cluster does not say (kubeadm's podSubnet).
pub const DEFAULT_IPV4_POOL_CIDR: &str = "192.168.0.0/16";

/// Facts about the cluster that defaults depend on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterDefaults {
    /// kubeadm's `networking.podSubnet`, if the cluster was set up by kubeadm (may list an IPv4 and an IPv6 CIDR).
    pub kubeadm_pod_subnets: Vec<String>,
}

/// Fills every default into a copy of `spec`.
pub fn effective(spec: &InstallationSpec, cluster: &ClusterDefaults) -> InstallationSpec {
    let mut out = spec.clone();
    let network = out.network.get_or_insert_with(NetworkSpec::default);
    let bgp = *network.bgp.get_or_insert(EnabledDisabled::Enabled);
    let pools = network.ip_pools.get_or_insert_with(|| default_pools(cluster));
    let mut seen_v4 = 0;
    let mut seen_v6 = 0;
    for pool in pools.iter_mut() {
        let v6 = pool.cidr.contains(':');
        let nth = if v6 {
            seen_v6 += 1;
            seen_v6
        } else {
            seen_v4 += 1;
            seen_v4
        };
        if pool.name.is_none() {
            let family = if v6 { "ipv6" } else { "ipv4" };
            pool.name = Some(if nth == 1 {
                format!("default-{family}-ippool")
            } else {
                format!("default-{family}-ippool-{nth}")
            });
        }
        pool.encapsulation.get_or_insert(match bgp {
            EnabledDisabled::Enabled => Encapsulation::None,
            EnabledDisabled::Disabled => Encapsulation::Vxlan,
        });
        pool.nat_outgoing.get_or_insert(if v6 { EnabledDisabled::Disabled } else { EnabledDisabled::Enabled });
        pool.node_selector.get_or_insert_with(|| ALL_NODES.to_string());
        pool.block_size.get_or_insert(if v6 { DEFAULT_BLOCK_SIZE_V6 } else { DEFAULT_BLOCK_SIZE_V4 });
        pool.disable_bgp_export.get_or_insert(false);
    }
    let has_v6 = pools.iter().any(|p| p.cidr.contains(':'));
    network
        .node_address_autodetection_v4
        .get_or_insert_with(|| NodeAddressAutodetection { first_found: Some(true), ..Default::default() });
    if has_v6 {
        network
            .node_address_autodetection_v6
            .get_or_insert_with(|| NodeAddressAutodetection { first_found: Some(true), ..Default::default() });
    }
    network.linux_dataplane.get_or_insert(LinuxDataplane::Nftables);
    network.host_ports.get_or_insert(EnabledDisabled::Enabled);

    let cni = out.cni.get_or_insert_with(CniSpec::default);
    cni.bin_dir.get_or_insert_with(|| DEFAULT_CNI_BIN_DIR.to_string());
    cni.conf_dir.get_or_insert_with(|| DEFAULT_CNI_CONF_DIR.to_string());

    let strategy = out.node_update_strategy.get_or_insert_with(NodeUpdateStrategy::default);
    strategy.type_.get_or_insert(UpdateStrategyType::RollingUpdate);
    strategy
        .rolling_update
        .get_or_insert_with(RollingUpdate::default)
        .max_unavailable
        .get_or_insert(IntOrString::Int(1));

    out.logging.get_or_insert_with(Logging::default).severity.get_or_insert(LogSeverity::Info);
    out
}

fn default_pools(cluster: &ClusterDefaults) -> Vec<InstallationIPPool> {
    let mut pools: Vec<InstallationIPPool> = cluster
        .kubeadm_pod_subnets
        .iter()
        .filter(|c| c.parse::<IpNet>().is_ok())
        .map(|cidr| InstallationIPPool { cidr: cidr.clone(), ..Default::default() })
        .collect();
    if pools.is_empty() {
        pools.push(InstallationIPPool { cidr: DEFAULT_IPV4_POOL_CIDR.to_string(), ..Default::default() });
    }
    pools
}

/// The effective Installation's network (always present after [`effective`]).
pub fn network(effective: &InstallationSpec) -> &NetworkSpec {
    effective.network.as_ref().expect("effective() always sets network")
}

/// The effective pools (always present after [`effective`]).
pub fn pools(effective: &InstallationSpec) -> &[InstallationIPPool] {
    network(effective).ip_pools.as_deref().expect("effective() always sets ipPools")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_gets_calicos_defaults() {
        let e = effective(&InstallationSpec::default(), &ClusterDefaults::default());
        let pools = pools(&e);
        assert_eq!(pools.len(), 1);
        let p = &pools[0];
        assert_eq!(p.name.as_deref(), Some("default-ipv4-ippool"));
        assert_eq!(p.cidr, "192.168.0.0/16");
        assert_eq!(p.block_size, Some(26));
        assert_eq!(p.encapsulation, Some(Encapsulation::None));
        assert_eq!(p.nat_outgoing, Some(EnabledDisabled::Enabled));
        assert_eq!(p.node_selector.as_deref(), Some("all()"));
        assert_eq!(network(&e).bgp, Some(EnabledDisabled::Enabled));
        assert_eq!(network(&e).host_ports, Some(EnabledDisabled::Enabled));
        assert_eq!(e.cni.as_ref().unwrap().bin_dir.as_deref(), Some("/opt/cni/bin"));
        assert!(network(&e).node_address_autodetection_v6.is_none());
        assert_eq!(e.logging.unwrap().severity, Some(LogSeverity::Info));
    }

    #[test]
    fn empty_pool_list_means_no_pools() {
        let spec = InstallationSpec {
            network: Some(NetworkSpec { ip_pools: Some(vec![]), ..Default::default() }),
            ..Default::default()
        };
        assert!(pools(&effective(&spec, &ClusterDefaults::default())).is_empty());
    }

    #[test]
    fn kubeadm_subnets_and_families() {
        let cluster = ClusterDefaults { kubeadm_pod_subnets: vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()] };
        let spec = InstallationSpec {
            network: Some(NetworkSpec { bgp: Some(EnabledDisabled::Disabled), ..Default::default() }),
            ..Default::default()
        };
        let e = effective(&spec, &cluster);
        let pools = pools(&e);
        assert_eq!(pools[0].cidr, "10.244.0.0/16");
        assert_eq!(pools[0].encapsulation, Some(Encapsulation::Vxlan), "no BGP: VXLAN");
        assert_eq!(pools[1].name.as_deref(), Some("default-ipv6-ippool"));
        assert_eq!(pools[1].block_size, Some(122));
        assert_eq!(pools[1].nat_outgoing, Some(EnabledDisabled::Disabled));
        assert!(network(&e).node_address_autodetection_v6.is_some());
    }

    #[test]
    fn effective_is_idempotent_and_keeps_user_values() {
        let spec: InstallationSpec = serde_json::from_value(serde_json::json!({
            "network": {"mtu": 1400, "ipPools": [{"cidr": "10.0.0.0/16", "blockSize": 24, "natOutgoing": "Disabled"}]}
        }))
        .unwrap();
        let once = effective(&spec, &ClusterDefaults::default());
        assert_eq!(effective(&once, &ClusterDefaults::default()), once);
        assert_eq!(pools(&once)[0].block_size, Some(24));
        assert_eq!(pools(&once)[0].nat_outgoing, Some(EnabledDisabled::Disabled));
        assert_eq!(network(&once).mtu, Some(1400));
    }
}
