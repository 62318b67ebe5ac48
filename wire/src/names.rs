//! Names more than one binary derives and must agree on.

use sha1::{Digest, Sha1};

/// Prefix of host-side veth names.
pub const VETH_PREFIX: &str = "tby";

/// The route protocol number of every route Tabby installs (`proto tabby`): the plugin's pod host routes
/// and the agent's routes alike, so cleanup and the agent's diff find exactly Tabby's.
pub const RTPROT_TABBY: u8 = 80;

/// The host-side veth of a pod: `tby` + the first 12 hex digits of SHA-1(`<namespace>.<pod>`), 15
/// characters (the kernel's limit).
pub fn veth_name(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{VETH_PREFIX}{hex}")
}

/// The host veth of an attachment: from its pod when the runtime names one, else from the container ID.
pub fn attachment_veth(namespace: Option<&str>, pod: Option<&str>, container_id: &str) -> String {
    match (namespace.filter(|n| !n.is_empty()), pod.filter(|p| !p.is_empty())) {
        (Some(ns), Some(pod)) => veth_name(ns, pod),
        _ => veth_name("", container_id),
    }
}

/// The IPAM handle of an attachment: `<network>.<containerID>` (Calico's form).
pub fn handle_id(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// The container ID of an attachment's handle (what follows `<network>.`; the whole handle otherwise).
pub fn container_of(handle: &str) -> &str {
    handle.split_once('.').map_or(handle, |(_, c)| c)
}

/// IPAM handle of a node's `vxlan.tabby` address (Calico's name).
pub fn vxlan_tunnel_handle(node: &str) -> String {
    format!("vxlan-tunnel-addr-{node}")
}

/// IPAM handle of a node's `tunl0` address (Calico's name).
pub fn ipip_tunnel_handle(node: &str) -> String {
    format!("ipip-tunnel-addr-{node}")
}

/// Whether a handle holds a tunnel device's address (VXLAN, IPIP) rather than a pod's.
pub fn is_tunnel_handle(handle: &str) -> bool {
    handle.starts_with("vxlan-tunnel-addr-") || handle.starts_with("ipip-tunnel-addr-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_sha1_based_and_fit_the_kernel_limit() {
        let n = veth_name("default", "web-0");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("tby"));
        assert_eq!(n, veth_name("default", "web-0"));
        assert_ne!(n, veth_name("default", "web-1"));
        // SHA-1("default.web-0") starts with these 12 hex digits.
        let digest = Sha1::digest(b"default.web-0");
        assert_eq!(&n[3..5], format!("{:02x}", digest[0]));
        // sha1sum of "default.nginx": c440f455693b69cdd48a37aa5ecd78038f50413d.
        assert_eq!(veth_name("default", "nginx"), "tbyc440f455693b");
        assert_ne!(veth_name("default", "a"), veth_name("other", "a"));
    }

    #[test]
    fn attachments_without_a_pod_are_named_from_their_container() {
        assert_eq!(attachment_veth(Some("default"), Some("web"), "c1"), veth_name("default", "web"));
        assert_eq!(attachment_veth(None, Some("web"), "c1"), veth_name("", "c1"));
        assert_eq!(attachment_veth(Some(""), Some("web"), "c1"), veth_name("", "c1"));
        assert_eq!(container_of(&handle_id("k8s-pod-network", "c1")), "c1");
        assert_eq!(container_of("plain"), "plain");
    }

    #[test]
    fn handles_follow_calico() {
        assert_eq!(handle_id("k8s-pod-network", "abc"), "k8s-pod-network.abc");
        assert_eq!(vxlan_tunnel_handle("n1"), "vxlan-tunnel-addr-n1");
        assert_eq!(ipip_tunnel_handle("node-1"), "ipip-tunnel-addr-node-1");
        assert!(is_tunnel_handle("ipip-tunnel-addr-n1") && is_tunnel_handle("vxlan-tunnel-addr-n1"));
        assert!(!is_tunnel_handle("k8s-pod-network.abc"));
    }
}
