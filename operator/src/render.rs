//! Rendering: a pure function from the effective Installation and a few cluster facts to every object the
//! network needs. Covered by golden-file tests (`tests/golden/`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Toleration};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tabby_api::agentenv as env;
use tabby_api::installation::{
    EnabledDisabled, Encapsulation, InstallationIPPool, LogSeverity, NodeAddressAutodetection, ProbeTimings,
};
use tabby_api::names::{
    CNI_CONFLIST_FILE, LOG_DIR, MANAGED_BY_LABEL, NODE_DAEMONSET, OPERATOR_FIELD_MANAGER, RT_PROTOS_DIR, RUN_DIR,
    STATE_DIR, SYSTEM_NAMESPACE,
};
use tabby_api::{IPPool, InstallationSpec};

use crate::computed;

/// Annotation on the agent pod template holding a hash of the CNI configuration, so a change rolls the pods.
pub const CNI_CONFIG_HASH_ANNOTATION: &str = "tabby.dev/cni-config-hash";
/// ServiceAccount, ClusterRole and DaemonSet name of the node agent.
pub const AGENT: &str = NODE_DAEMONSET;
/// Name of the CNI network in the conflist (the handle prefix of every allocation).
pub const CNI_NETWORK_NAME: &str = "k8s-pod-network";
/// Socket the CNI plugin asks the agent on.
pub const AGENT_SOCKET: &str = "/var/run/tabby/agent.sock";

/// Cluster facts rendering depends on.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The image of the agent unless the Installation overrides it (the operator's own image).
    pub default_image: String,
    /// IPPools the operator created earlier (label managed-by), to disable the ones no longer listed.
    pub managed_pools: Vec<IPPool>,
}

/// Everything the operator applies for one Installation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rendered {
    /// Applied with server-side apply, in this order; the DaemonSet comes last.
    pub objects: Vec<Value>,
    /// Created when absent and never changed afterwards (the user owns them); before `objects`, so the
    /// agents find them when they start.
    pub create_if_absent: Vec<Value>,
    /// Created when absent, and kept as rendered while the live object carries the operator's managed-by
    /// label (the operator made it: an upgrade brings it up to date); one anyone else made is left alone.
    /// Before `objects` too.
    pub unless_foreign: Vec<Value>,
}

/// Renders the effective Installation `spec`.
pub fn render(spec: &InstallationSpec, facts: &Facts) -> Rendered {
    let conflist = cni_conflist(spec);
    let mut objects = vec![namespace()];
    objects.extend(agent_rbac());
    objects.push(config_map(&conflist));
    objects.extend(ip_pools(spec, facts));
    // Last, so every agent starts with its pools, RBAC and CNI configuration already in place.
    objects.push(daemonset(spec, facts, &conflist));
    Rendered {
        objects,
        create_if_absent: vec![singleton("IPAMConfig"), singleton("BGPConfiguration")],
        unless_foreign: vec![cluster_network_policy_crd()],
    }
}

/// ClusterNetworkPolicy's CRD, created only when the cluster has none and updated only while it is the
/// one the operator created: it is the network-policy-api project's API, and a cluster that installed the
/// project's own (newer, or experimental-channel) CRD keeps it. Shipping it in operator.yaml instead would
/// make `kubectl apply -f operator.yaml` replace that CRD with ours.
fn cluster_network_policy_crd() -> Value {
    let mut crd = serde_json::to_value(tabby_api::crds::cluster_network_policy()).expect("CRDs serialize");
    crd["metadata"]["labels"] = labels("clusternetworkpolicies");
    crd
}

fn labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "tabby",
        MANAGED_BY_LABEL: OPERATOR_FIELD_MANAGER,
    })
}

fn namespace() -> Value {
    let mut l = labels(SYSTEM_NAMESPACE);
    // The agent runs privileged with the host network.
    l["pod-security.kubernetes.io/enforce"] = json!("privileged");
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE, "labels": l}})
}

fn agent_rbac() -> Vec<Value> {
    let l = labels(AGENT);
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": l}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": AGENT, "labels": l}, "rules": tabby_api::rbac::agent_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": AGENT, "labels": l},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT},
               "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": SYSTEM_NAMESPACE}]}),
        // Namespaced: BGP passwords live in Secrets of tabby-system; the IPAM garbage collector's Lease too.
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": l},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": l},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT},
               "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": SYSTEM_NAMESPACE}]}),
    ]
}

fn severity(spec: &InstallationSpec) -> LogSeverity {
    spec.logging.as_ref().and_then(|l| l.severity).unwrap_or_default()
}

fn severity_name(s: LogSeverity) -> &'static str {
    match s {
        LogSeverity::Error => "error",
        LogSeverity::Warning => "warning",
        LogSeverity::Info => "info",
        LogSeverity::Debug => "debug",
    }
}

/// The CNI network configuration list the nodes get.
pub fn cni_conflist(spec: &InstallationSpec) -> String {
    let network = computed::network(spec);
    let mut plugins = vec![json!({
        "type": tabby_api::names::CNI_PLUGIN_BINARY,
        "log_level": severity_name(severity(spec)),
        "log_file_path": format!("{LOG_DIR}/cni.log"),
        "mtu": network.mtu.unwrap_or(0),
        "agent_socket": AGENT_SOCKET,
    })];
    // A list has one version for every plugin in it. The reference portmap plugin the distributions ship
    // speaks CNI up to 1.0.0, so a list that chains it is 1.0.0; without it, 1.1.0 (STATUS and GC).
    let mut version = "1.1.0";
    if network.host_ports != Some(EnabledDisabled::Disabled) {
        plugins.push(json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}));
        version = "1.0.0";
    }
    let conflist = json!({"name": CNI_NETWORK_NAME, "cniVersion": version, "plugins": plugins});
    serde_json::to_string_pretty(&conflist).expect("JSON values serialize")
}

fn config_map(conflist: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": env::CONFIGMAP_NAME, "namespace": SYSTEM_NAMESPACE, "labels": labels(AGENT)},
        "data": {env::CONFIGMAP_CNI_KEY: conflist}
    })
}

/// Calico's autodetection syntax for the agent's environment.
pub fn autodetection_env(method: &NodeAddressAutodetection) -> String {
    if let Some(regex) = &method.interface {
        format!("interface={regex}")
    } else if let Some(regex) = &method.skip_interface {
        format!("skip-interface={regex}")
    } else if let Some(dest) = &method.can_reach {
        format!("can-reach={dest}")
    } else if let Some(cidrs) = &method.cidrs {
        format!("cidr={}", cidrs.join(","))
    } else if method.kubernetes.is_some() {
        "kubernetes-internal-ip".to_string()
    } else {
        "first-found".to_string()
    }
}

fn image(spec: &InstallationSpec, facts: &Facts) -> String {
    if let Some(image) = spec.agent_daemon_set.as_ref().and_then(|d| d.image.clone()) {
        return image;
    }
    match &spec.registry {
        // A registry override replaces the registry host of the default image.
        Some(registry) => {
            let path = facts
                .default_image
                .split_once('/')
                .map(
                    |(host, rest)| {
                        if host.contains('.') || host.contains(':') { rest } else { facts.default_image.as_str() }
                    },
                )
                .unwrap_or(&facts.default_image);
            format!("{}/{path}", registry.trim_end_matches('/'))
        }
        None => facts.default_image.clone(),
    }
}

fn probe(path: &str, period: i32, failure_threshold: i32, timings: Option<&ProbeTimings>) -> Value {
    let mut p = json!({
        "httpGet": {"host": "127.0.0.1", "path": path, "port": env::DEFAULT_HEALTH_PORT},
        "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failure_threshold
    });
    if let Some(t) = timings {
        for (key, value) in [
            ("initialDelaySeconds", t.initial_delay_seconds),
            ("periodSeconds", t.period_seconds),
            ("timeoutSeconds", t.timeout_seconds),
            ("failureThreshold", t.failure_threshold),
        ] {
            if let Some(v) = value {
                p[key] = json!(v);
            }
        }
    }
    p
}

fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.into()), value_from: None }
}

/// The agent's environment: rendered values, then the user's overrides (same name replaces, new ones append).
fn agent_env(spec: &InstallationSpec) -> Vec<EnvVar> {
    let network = computed::network(spec);
    let mut vars = vec![
        EnvVar {
            name: env::NODENAME.to_string(),
            value: None,
            value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "spec.nodeName".into(),
                }),
                ..Default::default()
            }),
        },
        env_var(env::BGP, if network.bgp == Some(EnabledDisabled::Disabled) { "Disabled" } else { "Enabled" }),
        env_var(env::MTU, network.mtu.unwrap_or(0).to_string()),
        env_var(env::LOG_SEVERITY, severity_name(severity(spec))),
        env_var(env::HEALTH_PORT, env::DEFAULT_HEALTH_PORT.to_string()),
    ];
    if let Some(m) = &network.node_address_autodetection_v4 {
        vars.push(env_var(env::IP_AUTODETECTION_METHOD, autodetection_env(m)));
    }
    if let Some(m) = &network.node_address_autodetection_v6 {
        vars.push(env_var(env::IP6_AUTODETECTION_METHOD, autodetection_env(m)));
    }
    for user in spec.agent_daemon_set.as_ref().and_then(|d| d.env.as_ref()).into_iter().flatten() {
        match vars.iter_mut().find(|v| v.name == user.name) {
            Some(existing) => *existing = user.clone(),
            None => vars.push(user.clone()),
        }
    }
    vars
}

fn host_path(name: &str, path: &str, kind: &str) -> Value {
    json!({"name": name, "hostPath": {"path": path, "type": kind}})
}

fn daemonset(spec: &InstallationSpec, facts: &Facts, conflist: &str) -> Value {
    let cni = spec.cni.clone().unwrap_or_default();
    let bin_dir = cni.bin_dir.unwrap_or_else(|| tabby_api::names::DEFAULT_CNI_BIN_DIR.into());
    let conf_dir = cni.conf_dir.unwrap_or_else(|| tabby_api::names::DEFAULT_CNI_CONF_DIR.into());
    let overrides = spec.agent_daemon_set.clone().unwrap_or_default();
    let probes = overrides.probes.clone().unwrap_or_default();
    let image = image(spec, facts);
    let hash = format!("{:x}", Sha256::digest(conflist.as_bytes()));

    let mut node_selector: BTreeMap<String, String> = BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]);
    node_selector.extend(overrides.node_selector.clone().unwrap_or_default());
    // The pod network must come up on every node, tainted or not.
    let tolerations = overrides
        .tolerations
        .clone()
        .unwrap_or_else(|| vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]);
    let resources = overrides
        .resources
        .clone()
        .map(|r| serde_json::to_value(r).expect("serializes"))
        .unwrap_or_else(|| json!({"requests": {"cpu": "50m", "memory": "64Mi"}}));
    let strategy = spec
        .node_update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone());
    let max_unavailable =
        serde_json::to_value(strategy.unwrap_or(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)))
            .expect("serializes");
    let pull_secrets: Vec<Value> = spec.image_pull_secrets.iter().flatten().map(|s| json!({"name": s.name})).collect();

    let mut pod_spec = json!({
        "hostNetwork": true,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical",
        "serviceAccountName": AGENT,
        "terminationGracePeriodSeconds": 10,
        "nodeSelector": node_selector,
        "tolerations": serde_json::to_value(tolerations).expect("serializes"),
        "initContainers": [{
            "name": "install-cni",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["tabby-agent", "install-cni"],
            "env": [
                {"name": env::CNI_NETWORK_CONFIG, "valueFrom": {"configMapKeyRef": {"name": env::CONFIGMAP_NAME, "key": env::CONFIGMAP_CNI_KEY}}},
                {"name": env::CNI_CONF_NAME, "value": CNI_CONFLIST_FILE},
                {"name": env::CNI_BIN_DIR, "value": env::CONTAINER_CNI_BIN_DIR},
                {"name": env::CNI_CONF_DIR, "value": env::CONTAINER_CNI_CONF_DIR},
            ],
            "securityContext": {"privileged": true, "runAsUser": 0},
            "volumeMounts": [
                {"name": "cni-bin-dir", "mountPath": env::CONTAINER_CNI_BIN_DIR},
                {"name": "cni-net-dir", "mountPath": env::CONTAINER_CNI_CONF_DIR},
            ]
        }],
        "containers": [{
            "name": "tabby-agent",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["tabby-agent"],
            "env": serde_json::to_value(agent_env(spec)).expect("serializes"),
            "securityContext": {"privileged": true, "runAsUser": 0},
            "resources": resources,
            "livenessProbe": probe("/liveness", 10, 6, probes.liveness.as_ref()),
            "readinessProbe": probe("/readiness", 10, 3, probes.readiness.as_ref()),
            "startupProbe": probe("/liveness", 2, 150, probes.startup.as_ref()),
            "volumeMounts": [
                {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": true},
                {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
                {"name": "var-run-tabby", "mountPath": RUN_DIR},
                {"name": "var-lib-tabby", "mountPath": STATE_DIR},
                {"name": "var-log-tabby", "mountPath": LOG_DIR},
                {"name": "iproute2-protos", "mountPath": RT_PROTOS_DIR},
                {"name": "cni-bin-dir", "mountPath": env::CONTAINER_CNI_BIN_DIR},
                {"name": "cni-net-dir", "mountPath": env::CONTAINER_CNI_CONF_DIR},
            ]
        }],
        "volumes": [
            host_path("lib-modules", "/lib/modules", "Directory"),
            host_path("xtables-lock", "/run/xtables.lock", "FileOrCreate"),
            host_path("var-run-tabby", RUN_DIR, "DirectoryOrCreate"),
            host_path("var-lib-tabby", STATE_DIR, "DirectoryOrCreate"),
            host_path("var-log-tabby", LOG_DIR, "DirectoryOrCreate"),
            host_path("iproute2-protos", RT_PROTOS_DIR, "DirectoryOrCreate"),
            host_path("cni-bin-dir", &bin_dir, "DirectoryOrCreate"),
            host_path("cni-net-dir", &conf_dir, "DirectoryOrCreate"),
        ]
    });
    if !pull_secrets.is_empty() {
        pod_spec["imagePullSecrets"] = json!(pull_secrets);
    }
    let l = labels(AGENT);
    // The pods also carry `k8s-app=tabby-node`, the label Calico users select calico-node's pods by
    // (`kubectl logs -n calico-system -l k8s-app=calico-node`). The selector stays as it was: it is immutable.
    let mut pod_labels = l.clone();
    pod_labels["k8s-app"] = json!(AGENT);
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": l},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {CNI_CONFIG_HASH_ANNOTATION: hash}},
                "spec": pod_spec
            }
        }
    })
}

fn pool_object(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
           "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: OPERATOR_FIELD_MANAGER}}, "spec": spec})
}

/// The IPPool for one of the Installation's (effective) pools.
pub fn ip_pool(pool: &InstallationIPPool) -> Value {
    let encapsulation = pool.encapsulation.unwrap_or(Encapsulation::None);
    let (ipip, vxlan) = match encapsulation {
        Encapsulation::None => ("Never", "Never"),
        Encapsulation::Vxlan => ("Never", "Always"),
        Encapsulation::VxlanCrossSubnet => ("Never", "CrossSubnet"),
        Encapsulation::Ipip => ("Always", "Never"),
        Encapsulation::IpipCrossSubnet => ("CrossSubnet", "Never"),
    };
    pool_object(
        pool.name.as_deref().unwrap_or_default(),
        json!({
            "cidr": pool.cidr,
            "blockSize": pool.block_size,
            "ipipMode": ipip,
            "vxlanMode": vxlan,
            "natOutgoing": pool.nat_outgoing == Some(EnabledDisabled::Enabled),
            "nodeSelector": pool.node_selector,
            "disableBGPExport": pool.disable_bgp_export.unwrap_or(false),
            "disabled": false,
        }),
    )
}

/// Pools of the Installation, and the pools the operator made earlier that the Installation no longer
/// lists: those are disabled (no new addresses), never deleted, since pods may still hold their addresses.
fn ip_pools(spec: &InstallationSpec, facts: &Facts) -> Vec<Value> {
    let pools = computed::pools(spec);
    let mut out: Vec<Value> = pools.iter().map(ip_pool).collect();
    for old in &facts.managed_pools {
        let name = old.metadata.name.clone().unwrap_or_default();
        if pools.iter().any(|p| p.name.as_deref() == Some(&name)) {
            continue;
        }
        let mut spec = serde_json::to_value(&old.spec).expect("serializes");
        spec["disabled"] = json!(true);
        out.push(pool_object(&name, spec));
    }
    out
}

fn singleton(kind: &str) -> Value {
    json!({"apiVersion": "tabby.dev/v1", "kind": kind, "metadata": {"name": "default"}, "spec": {}})
}
