//! Golden files of the rendering: `tests/golden/<case>.yaml` holds what `render()` gives for each case.
//! After an intended change, regenerate them with `UPDATE_GOLDEN=1 cargo test -p tabby-operator --test golden`
//! and review the diff.

use serde_json::json;
use tabby_api::{IPPool, InstallationSpec};
use tabby_operator::computed::{ClusterDefaults, effective};
use tabby_operator::render::{Facts, render};

fn check(case: &str, spec: serde_json::Value, facts: Facts) {
    let spec: InstallationSpec = serde_json::from_value(spec).unwrap();
    let rendered = render(&effective(&spec, &ClusterDefaults::default()), &facts);
    // Agents start only once everything they read exists: the DaemonSet is applied last.
    assert_eq!(rendered.objects.last().map(|o| o["kind"].clone()), Some(json!("DaemonSet")), "{case}");
    let mut text = String::new();
    for object in rendered.objects.iter().chain(&rendered.create_if_absent).chain(&rendered.unless_foreign) {
        text.push_str("---\n");
        if object["kind"] == "CustomResourceDefinition" {
            // Generated from the API types and checked in api/tests; here only that it is rendered.
            text.push_str(&format!("# CustomResourceDefinition {} (api::crds)\n", object["metadata"]["name"]));
            continue;
        }
        text.push_str(&serde_yaml::to_string(object).unwrap());
    }
    let path = format!("{}/tests/golden/{case}.yaml", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{path} missing: run with UPDATE_GOLDEN=1"));
    assert!(
        golden == text,
        "{case}: rendering differs from {path}; if intended, regenerate with UPDATE_GOLDEN=1\n{text}"
    );
}

fn facts() -> Facts {
    Facts { default_image: "ghcr.io/tabby-dev/tabby:v0.1.0".into(), managed_pools: Vec::new() }
}

#[test]
fn default_installation() {
    check("default", json!({}), facts());
}

#[test]
fn everything_set() {
    check(
        "everything-set",
        json!({
            "registry": "registry.example.com/",
            "imagePullSecrets": [{"name": "pull"}],
            "network": {
                "bgp": "Enabled",
                "mtu": 1450,
                "ipPools": [
                    {"name": "pods-v4", "cidr": "10.244.0.0/16", "encapsulation": "VXLANCrossSubnet", "blockSize": 24},
                    {"cidr": "fd00:10:244::/48", "encapsulation": "None", "disableBGPExport": true}
                ],
                "nodeAddressAutodetectionV4": {"cidrs": ["192.168.100.0/24"]},
                "nodeAddressAutodetectionV6": {"interface": "eth.*"},
                "hostPorts": "Disabled"
            },
            "cni": {"binDir": "/usr/libexec/cni", "confDir": "/etc/cni/net.d"},
            "nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": "20%"}},
            "agentDaemonSet": {
                "env": [{"name": "TABBY_LOG_SEVERITY", "value": "debug"}, {"name": "EXTRA", "value": "1"}],
                "resources": {"requests": {"cpu": "100m", "memory": "80Mi"}, "limits": {"memory": "200Mi"}},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "net", "effect": "NoSchedule"}],
                "nodeSelector": {"pool": "general"},
                "probes": {"readiness": {"periodSeconds": 5}, "liveness": {"failureThreshold": 10}}
            },
            "logging": {"severity": "Warning"}
        }),
        facts(),
    );
}

#[test]
fn removed_pool_is_disabled_not_deleted() {
    let old: IPPool = serde_json::from_value(json!({
        "apiVersion": "tabby.dev/v1", "kind": "IPPool",
        "metadata": {"name": "old-pool", "labels": {"app.kubernetes.io/managed-by": "tabby-operator"}},
        "spec": {"cidr": "172.16.0.0/16", "blockSize": 26, "natOutgoing": true}
    }))
    .unwrap();
    check("removed-pool", json!({"network": {"bgp": "Disabled"}}), Facts { managed_pools: vec![old], ..facts() });
}
