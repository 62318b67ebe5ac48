//! The node agent's Kubernetes permissions: one list, read by the operator (which renders the agent's
//! ClusterRole) and by the manifests generator (the operator's own ClusterRole must hold every permission it
//! grants: Kubernetes refuses to let a role grant what its creator lacks).

use serde_json::{Value, json};

/// The agent's ClusterRole rules. The CNI plugin needs none: it talks only to the agent on the node's socket.
pub fn agent_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods", "namespaces", "serviceaccounts"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["tabby.dev"], "resources": ["ippools", "ipamconfigs", "bgpconfigurations", "bgppeers"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["tabby.dev"], "resources": ["ipamblocks", "blockaffinities", "ipamhandles"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["tabby.dev"], "resources": ["nodestatuses"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["tabby.dev"], "resources": ["nodestatuses/status"], "verbs": ["get", "update", "patch"]},
        // Network policy: what the policy reconciler reads, and the Valid condition it writes.
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["tabby.dev"],
         "resources": ["networkpolicies", "globalnetworkpolicies", "stagednetworkpolicies",
                       "stagedglobalnetworkpolicies", "networksets", "globalnetworksets", "tiers"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["tabby.dev"],
         "resources": ["networkpolicies/status", "globalnetworkpolicies/status", "stagednetworkpolicies/status",
                       "stagedglobalnetworkpolicies/status"],
         "verbs": ["get", "patch"]},
        {"apiGroups": ["policy.networking.k8s.io"], "resources": ["clusternetworkpolicies"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["policy.networking.k8s.io"], "resources": ["clusternetworkpolicies/status"],
         "verbs": ["get", "patch"]},
        // To tell an uninstall (Installation being deleted: clean the node) from a rolling update.
        {"apiGroups": ["operator.tabby.dev"], "resources": ["installations"], "verbs": ["get", "list", "watch"]},
    ])
}

/// `rules` followed by every rule of `more` (for a role that must hold another's permissions).
pub fn with_rules(rules: Value, more: Value) -> Value {
    let mut all = match rules {
        Value::Array(a) => a,
        other => vec![other],
    };
    match more {
        Value::Array(a) => all.extend(a),
        other => all.push(other),
    }
    Value::Array(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_rules_appends_in_order() {
        let all = with_rules(json!([{"a": 1}]), agent_rules());
        let n = agent_rules().as_array().map_or(0, Vec::len);
        assert_eq!(all.as_array().map(Vec::len), Some(n + 1));
        assert_eq!(all[0], json!({"a": 1}));
        assert_eq!(all[n], agent_rules()[n - 1]);
    }
}
