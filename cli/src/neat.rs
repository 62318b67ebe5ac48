//! Objects for `-o yaml|json`: what the server added is removed, so the output can be applied again.

use serde_json::Value;

/// Metadata fields the server owns; `kubectl apply` of an object carrying them would fail or conflict.
const SERVER_METADATA: &[&str] =
    &["managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink", "deletionTimestamp"];

/// The annotation client-side apply writes; it only repeats the object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Strips server-owned metadata (keeping name, namespace, labels, annotations, finalizers, owners),
/// and empty maps, from an object with apiVersion and kind.
pub fn neat(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in SERVER_METADATA {
            meta.remove(*key);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove(LAST_APPLIED);
        }
        meta.retain(|_, v| !is_empty(v));
    }
    object
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn server_fields_go_and_the_rest_stays() {
        let object = json!({
            "apiVersion": "tabby.dev/v1", "kind": "IPPool",
            "metadata": {
                "name": "p", "uid": "x", "resourceVersion": "5", "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}],
                "labels": {"a": "b"}, "finalizers": [],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
            },
            "spec": {"cidr": "10.0.0.0/16"}
        });
        assert_eq!(
            neat(object),
            json!({
                "apiVersion": "tabby.dev/v1", "kind": "IPPool",
                "metadata": {"name": "p", "labels": {"a": "b"}},
                "spec": {"cidr": "10.0.0.0/16"}
            })
        );
    }
}
