//! Whether the node forwards pod traffic. Packets for a pod arrive on the node's uplink and leave on
//! the pod's veth: the kernel forwards them only with `net.ipv4.ip_forward=1` (and, for IPv6 pods,
//! `net.ipv6.conf.all.forwarding=1`). The CNI plugin turns forwarding on for each pod's host veth, but
//! the node-wide switches are the administrator's (kubeadm requires them): enabling IPv6 forwarding
//! stops router advertisements on interfaces with `accept_ra=1`, which a node may depend on. So the
//! agent reports a switch that is off (RoutesReady=False, reason `ForwardingDisabled`) instead of
//! flipping it.

/// The reason reported while a switch is off.
pub const REASON: &str = "ForwardingDisabled";

const V4: &str = "/proc/sys/net/ipv4/ip_forward";
const V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// What is wrong, from the switches' contents (`None`: unreadable, so not known to be off); IPv6 counts
/// only when the node serves IPv6 pods.
pub fn problem(v4: Option<&str>, v6: Option<&str>, v6_pods: bool) -> Option<String> {
    let off = |v: Option<&str>| v.is_some_and(|s| s.trim() == "0");
    let mut names = Vec::new();
    if off(v4) {
        names.push("net.ipv4.ip_forward");
    }
    if v6_pods && off(v6) {
        names.push("net.ipv6.conf.all.forwarding");
    }
    (!names.is_empty()).then(|| {
        format!("{} = 0: traffic from other nodes does not reach this node's pods; set it to 1", names.join(" and "))
    })
}

/// The switches of this node as read from /proc (`None`: unreadable), for [`problem`].
pub fn read() -> (Option<String>, Option<String>) {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    (read(V4), read(V6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_that_is_off_is_named_and_ipv6_counts_only_with_ipv6_pods() {
        assert_eq!(problem(Some("1\n"), Some("1\n"), true), None);
        assert_eq!(problem(None, None, true), None, "unreadable is not known to be off");
        let m = problem(Some("0\n"), Some("0\n"), false).unwrap();
        assert!(m.starts_with("net.ipv4.ip_forward = 0"), "{m}");
        assert!(!m.contains("ipv6"), "{m}");
        let m = problem(Some("1\n"), Some("0\n"), true).unwrap();
        assert!(m.starts_with("net.ipv6.conf.all.forwarding = 0"), "{m}");
        let m = problem(Some("0"), Some("0"), true).unwrap();
        assert!(m.contains("net.ipv4.ip_forward and net.ipv6.conf.all.forwarding"), "{m}");
    }
}
