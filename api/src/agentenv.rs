//! The contract between the operator and the node agent: the environment variables the operator renders
//! into the `tabby-node` DaemonSet and the agent (and its `install-cni` init container) reads.
//!
//! Network objects (IPPool, BGPConfiguration, BGPPeer, IPAMConfig) are not passed here: the agent watches
//! them in the API. Only node-local settings the Installation decides travel as environment.

/// Name of this node (downward API `spec.nodeName`).
pub const NODENAME: &str = "NODENAME";
/// `Enabled` or `Disabled`: whether the agent runs BGP.
pub const BGP: &str = "TABBY_BGP";
/// Pod interface MTU; unset or 0: detect from the underlay.
pub const MTU: &str = "TABBY_MTU";
/// IPv4 node address detection, Calico's syntax: `first-found`, `kubernetes-internal-ip`,
/// `interface=REGEX`, `skip-interface=REGEX`, `can-reach=DEST`, `cidr=CIDR[,CIDR…]`.
pub const IP_AUTODETECTION_METHOD: &str = "TABBY_IP_AUTODETECTION_METHOD";
/// IPv6 node address detection, same syntax; unset: no IPv6 address.
pub const IP6_AUTODETECTION_METHOD: &str = "TABBY_IP6_AUTODETECTION_METHOD";
/// Log level: `error`, `warn`, `info`, `debug`.
pub const LOG_SEVERITY: &str = "TABBY_LOG_SEVERITY";
/// Port of the agent's `/liveness`, `/readiness` and `/metrics` (host network).
pub const HEALTH_PORT: &str = "TABBY_HEALTH_PORT";
/// Default of [`HEALTH_PORT`] (Calico's node agent uses the same port).
pub const DEFAULT_HEALTH_PORT: u16 = 9099;

/// install-cni: the CNI network configuration (a conflist) to write, from the operator's ConfigMap.
pub const CNI_NETWORK_CONFIG: &str = "TABBY_CNI_NETWORK_CONFIG";
/// install-cni: file name of the conflist in the CNI configuration directory.
pub const CNI_CONF_NAME: &str = "TABBY_CNI_CONF_NAME";
/// install-cni: where the host's CNI binary directory is mounted in the container.
pub const CNI_BIN_DIR: &str = "TABBY_CNI_BIN_DIR";
/// install-cni: where the host's CNI configuration directory is mounted in the container.
pub const CNI_CONF_DIR: &str = "TABBY_CNI_CONF_DIR";
/// Mount point of the host's CNI binary directory in the agent pod.
pub const CONTAINER_CNI_BIN_DIR: &str = "/host/opt/cni/bin";
/// Mount point of the host's CNI configuration directory in the agent pod.
pub const CONTAINER_CNI_CONF_DIR: &str = "/host/etc/cni/net.d";

/// Key of the CNI conflist in the operator's ConfigMap `tabby-config` (namespace tabby-system).
pub const CONFIGMAP_CNI_KEY: &str = "cni_network_config";
/// The operator's ConfigMap of node settings.
pub const CONFIGMAP_NAME: &str = "tabby-config";
