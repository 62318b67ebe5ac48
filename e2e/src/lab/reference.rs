//! Debian's reference CNI plugins as the lab's pod network instead of Tabby: the conformance control
//! (bridge + host-local) and the benchmarks' reference (ptp + host-local). Node N's pods get
//! 10.244.N.0/24; every node routes the other nodes' /24s to them; the configuration is
//! `10-reference.conflist`, which sorts before Tabby's, so while it is there it is the node's network.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::node::LabNode;

/// The file the configuration is written to, in each node's `/etc/cni/net.d`.
const CONFLIST: &str = "10-reference.conflist";

/// How long containerd takes to pick a changed CNI configuration up (it reloads within a few hundred
/// milliseconds of a change).
pub const RELOAD: Duration = Duration::from_secs(3);

fn subnet(index: usize) -> String {
    format!("10.244.{index}.0/24")
}

/// The conformance control's configuration for node `index`: bridge `cni0` with its gateway, host-local
/// from the node's /24, no masquerade (pods keep their addresses across nodes), portmap for hostPorts.
pub fn bridge_conflist(index: usize) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet(index)}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    })
    .to_string()
}

/// The benchmarks' reference for node `index`: ptp with host-local from the node's /24, no masquerade,
/// and portmap when `portmap`.
pub fn ptp_conflist(index: usize, portmap: bool) -> String {
    let mut plugins = vec![json!({"type": "ptp", "ipMasq": false, "mtu": 1500,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet(index)}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/lib/cni/networks"}})];
    if portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    json!({"cniVersion": "1.0.0", "name": "reference", "plugins": plugins}).to_string()
}

/// Makes the reference plugins the network of the lab's `nodes` nodes: routes to the other nodes' /24s,
/// then `conflist(index)` written beside and renamed in (containerd reloads on the rename).
pub fn install(state: &Path, nodes: usize, conflist: impl Fn(usize) -> String) -> Result<(), String> {
    for i in 0..nodes {
        let node = LabNode::new(state, i);
        for j in (0..nodes).filter(|j| *j != i) {
            let peer = LabNode::new(state, j);
            let out = node.shell(&format!("ip route replace {} via {}", subnet(j), peer.address)).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                return Err(format!("{}: route to node-{j}'s pods: {out:?}", node.name));
            }
        }
        let dir = node.host_path("/etc/cni/net.d");
        let tmp = dir.join(format!(".{CONFLIST}.tmp"));
        std::fs::write(&tmp, conflist(i)).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, dir.join(CONFLIST)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes the reference configuration from every node (the routes stay: nothing else uses 10.244/16)
/// and waits for containerd to reload.
pub fn remove(state: &Path, nodes: usize) -> Result<(), String> {
    for i in 0..nodes {
        let dir = LabNode::new(state, i).host_path("/etc/cni/net.d");
        std::fs::remove_file(dir.join(CONFLIST)).map_err(|e| e.to_string())?;
    }
    std::thread::sleep(RELOAD);
    Ok(())
}
