//! The container runtime's side of CNI, as the lab's node runner does it for a pod: pick the first network
//! configuration in the node's /etc/cni/net.d, run each plugin of the list from the node's /opt/cni/bin
//! with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME,
//! K8S_POD_INFRA_CONTAINER_ID) and CNI_PATH, passing each plugin the previous one's result (`prevResult`);
//! DEL runs the list in reverse with the cached ADD result.

use std::io::Write;
use std::process::Stdio;

use serde_json::{Value, json};

use super::LabNode;
use super::sh;

/// One pod's attachment.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub netns_path: String,
    pub ifname: String,
    pub namespace: String,
    pub pod: String,
}

/// The node's network configuration list: the first `.conflist` (or `.conf`) file by name.
pub fn conflist(node: &LabNode) -> Result<Value, String> {
    let dir = node.host_path("/etc/cni/net.d");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
        .collect();
    files.sort();
    let first = files.first().ok_or_else(|| format!("no network configuration in the node's {}", dir.display()))?;
    let text = std::fs::read_to_string(first).map_err(|e| format!("{}: {e}", first.display()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", first.display()))?;
    Ok(if value.get("plugins").is_some() {
        value
    } else {
        json!({"name": value["name"], "cniVersion": value["cniVersion"], "plugins": [value]})
    })
}

fn invoke(node: &LabNode, command: &str, a: &Attachment, config: &Value) -> Result<Value, String> {
    let plugin = config["type"].as_str().ok_or("a plugin without type")?;
    let argv = vec![format!("/opt/cni/bin/{plugin}")];
    let mut cmd = sh::in_node(&node.netns, &node.node_binds(), None, &argv);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &a.container_id)
        .env("CNI_NETNS", &a.netns_path)
        .env("CNI_IFNAME", &a.ifname)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                a.namespace, a.pod, a.container_id
            ),
        )
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{plugin}: {e}"))?;
    child.stdin.take().ok_or("stdin")?.write_all(config.to_string().as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "CNI {command} {plugin}: {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if stdout.trim().is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_str(&stdout).map_err(|e| format!("{plugin} result: {e}: {stdout}"))
    }
}

fn plugin_config(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut config = plugin.clone();
    config["name"] = list["name"].clone();
    config["cniVersion"] = list["cniVersion"].clone();
    if let Some(prev) = prev.filter(|p| !p.is_null()) {
        config["prevResult"] = prev.clone();
    }
    config
}

/// ADD through the whole list; returns the final result.
pub fn add(node: &LabNode, a: &Attachment) -> Result<Value, String> {
    let list = conflist(node)?;
    let mut result = Value::Null;
    for plugin in list["plugins"].as_array().ok_or("conflist without plugins")? {
        let config = plugin_config(&list, plugin, Some(&result));
        result = invoke(node, "ADD", a, &config)?;
    }
    Ok(result)
}

/// DEL through the list in reverse, with the ADD result as prevResult; errors of every plugin are collected.
pub fn del(node: &LabNode, a: &Attachment, prev: Option<&Value>) -> Result<(), String> {
    let list = conflist(node)?;
    let mut errors = Vec::new();
    for plugin in list["plugins"].as_array().ok_or("conflist without plugins")?.iter().rev() {
        let config = plugin_config(&list, plugin, prev);
        if let Err(e) = invoke(node, "DEL", a, &config) {
            errors.push(e);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// The first address of a CNI result, without its prefix length.
pub fn first_ip(result: &Value) -> Option<String> {
    result["ips"].as_array()?.first()?["address"].as_str()?.split('/').next().map(str::to_string)
}

/// Every address of a CNI result.
pub fn ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next().map(str::to_string))
        .collect()
}
