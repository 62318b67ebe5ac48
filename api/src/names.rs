//! Names shared by every component: namespaces, objects, annotations, host paths.

/// Namespace the operator runs in.
pub const OPERATOR_NAMESPACE: &str = "tabby-operator";
/// Namespace the operator renders the node agent and its configuration into.
pub const SYSTEM_NAMESPACE: &str = "tabby-system";
/// The singleton Installation, IPAMConfig and BGPConfiguration are all named `default`.
pub const DEFAULT_NAME: &str = "default";
/// The TabbyStatus of the core network component.
pub const NETWORK_STATUS_NAME: &str = "network";
/// The agent DaemonSet.
pub const NODE_DAEMONSET: &str = "tabby-node";
/// Field manager the operator uses for server-side apply.
pub const OPERATOR_FIELD_MANAGER: &str = "tabby-operator";
/// Finalizer that stages the teardown of an Installation.
pub const CLEANUP_FINALIZER: &str = "operator.tabby.dev/cleanup";
/// Label put on objects the operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Pod or namespace annotation choosing IPv4 pools (a JSON list of pool names).
pub const IPV4_POOLS_ANNOTATION: &str = "tabby.dev/ipv4pools";
/// Pod or namespace annotation choosing IPv6 pools (a JSON list of pool names).
pub const IPV6_POOLS_ANNOTATION: &str = "tabby.dev/ipv6pools";
/// Pod annotation asking for fixed addresses (a JSON list of addresses).
pub const IP_ADDRS_ANNOTATION: &str = "tabby.dev/ipAddrs";

/// Host path of the CNI network configuration Tabby writes.
pub const CNI_CONFLIST_FILE: &str = "10-tabby.conflist";
/// Name of the CNI plugin binary.
pub const CNI_PLUGIN_BINARY: &str = "tabby";
/// Default CNI binary directory on a node.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Default CNI configuration directory on a node.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Agent state directory on a node (mtu, nodename, state).
pub const STATE_DIR: &str = "/var/lib/tabby";
/// Agent runtime directory on a node (the CNI socket).
pub const RUN_DIR: &str = "/var/run/tabby";
/// Agent log directory on a node (the CNI plugin's log).
pub const LOG_DIR: &str = "/var/log/tabby";
/// Where iproute2 reads route protocol names on a node: the agent writes `tabby.conf` there, so `ip route`
/// on the node shows `proto tabby` for Tabby's routes.
pub const RT_PROTOS_DIR: &str = "/etc/iproute2/rt_protos.d";
