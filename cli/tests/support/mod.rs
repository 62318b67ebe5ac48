//! Running `kubectl-tabby` and `kubectl` against a test control plane, and seeding objects.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use tabby_testkit::{ControlPlane, repo_root};

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl-tabby --kubeconfig <kubeconfig> args…` with TZ=UTC, no $NODENAME and no $KUBECONFIG.
pub fn tabby(kubeconfig: &Path, args: &[&str]) -> Run {
    tabby_env(kubeconfig, args, &[])
}

/// Like [`tabby`], with extra environment variables.
pub fn tabby_env(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-tabby"));
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args).env("TZ", "UTC").env_remove("NODENAME").env_remove("KUBECONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("kubectl-tabby runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary and requires exit code 0; returns stdout.
pub fn tabby_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let run = tabby(&cp.kubeconfig, args);
    assert_eq!(run.code, 0, "kubectl-tabby {}: {run:?}", args.join(" "));
    run.stdout
}

/// `kubectl <verb> -f -` with `input` on stdin; panics on failure.
pub fn kubectl_stdin(cp: &ControlPlane, args: &[&str], input: &str) -> String {
    let out = cp.kubectl_stdin(args, input);
    assert!(out.status.success(), "kubectl {}: {}\n{input}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates or updates objects, sent as a stream of JSON documents (a `kind: List` would be validated by
/// kubectl itself, which rejects the nulls of IPAMBlock allocations).
pub fn apply(cp: &ControlPlane, objects: &[Value]) {
    let stream: String = objects.iter().map(|o| o.to_string() + "\n").collect();
    kubectl_stdin(cp, &["apply", "-f", "-"], &stream);
}

/// Merges `status` into an object's status subresource.
pub fn patch_status(cp: &ControlPlane, resource: &str, namespace: Option<&str>, name: &str, status: Value) {
    let patch = json!({ "status": status }).to_string();
    let mut args = vec!["patch", resource, name, "--subresource=status", "--type=merge", "-p", &patch];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    cp.kubectl_ok(&args);
}

/// Loads Tabby's CRDs and waits until they are served.
pub fn install_crds(cp: &ControlPlane) {
    cp.kubectl_ok(&["create", "-f", repo_root().join("crds").to_str().unwrap()]);
    cp.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
}

/// A namespace and its `default` ServiceAccount (no controller-manager creates it here).
pub fn namespace(name: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}),
    ]
}

/// A Node object.
pub fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

/// A pod bound to `node`; give it an address with [`set_pod_ip`].
pub fn pod(namespace: &str, name: &str, node: &str, host_network: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "c", "image": "busybox"}]}
    })
}

/// Sets a pod's status.podIP(s), as the kubelet would.
pub fn set_pod_ip(cp: &ControlPlane, namespace: &str, name: &str, ip: &str) {
    patch_status(cp, "pod", Some(namespace), name, json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}));
}

/// An IPPool.
pub fn ippool(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec})
}

/// An allocation attribute of a pod.
pub fn pod_attribute(handle: &str, namespace: &str, pod: &str, node: &str) -> Value {
    json!({"handle_id": handle, "secondary": {"namespace": namespace, "pod": pod, "node": node, "type": "pod"}})
}

/// A consistent IPAMBlock of 64 addresses: `held` lists (ordinal, attribute).
pub fn block(cidr: &str, node: &str, held: &[(usize, Value)]) -> Value {
    let mut allocations = vec![Value::Null; 64];
    let mut attributes = Vec::new();
    for (ordinal, attribute) in held {
        allocations[*ordinal] = json!(attributes.len());
        attributes.push(attribute.clone());
    }
    let unallocated: Vec<usize> = (0..64).filter(|o| allocations[*o].is_null()).collect();
    json!({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMBlock",
        "metadata": {"name": tabby_api::ipam::cidr_object_name(cidr)},
        "spec": {
            "cidr": cidr, "affinity": format!("host:{node}"), "allocations": allocations,
            "unallocated": unallocated, "attributes": attributes, "sequenceNumber": 1, "deleted": false
        }
    })
}

/// A confirmed BlockAffinity.
pub fn affinity(node: &str, cidr: &str) -> Value {
    json!({
        "apiVersion": "tabby.dev/v1", "kind": "BlockAffinity",
        "metadata": {"name": tabby_api::ipam::block_affinity_name(node, cidr)},
        "spec": {"state": "confirmed", "node": node, "cidr": cidr, "deleted": false}
    })
}

/// An IPAMHandle named after its handle.
pub fn handle(id: &str, blocks: &[(&str, i32)]) -> Value {
    let block: serde_json::Map<String, Value> = blocks.iter().map(|(c, n)| (c.to_string(), json!(n))).collect();
    json!({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMHandle",
        "metadata": {"name": id}, "spec": {"handleID": id, "block": block, "deleted": false}
    })
}

/// The rows of a kubectl-style table: cells are separated by two or more spaces.
pub fn plain_rows(text: &str) -> Vec<Vec<String>> {
    text.lines().map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect()).collect()
}

/// The rows of a bordered table (header first), without the `+---+` rules.
pub fn bordered_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// Expected rows from string literals.
pub fn rows(expected: &[&[&str]]) -> Vec<Vec<String>> {
    expected.iter().map(|r| r.iter().map(|c| c.to_string()).collect()).collect()
}
