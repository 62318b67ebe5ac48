//! Writing rendered objects: server-side apply with the operator's field manager, but only when the live
//! object differs from what we want, so a steady state costs no API writes.

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tabby_api::names::{MANAGED_BY_LABEL, OPERATOR_FIELD_MANAGER};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{kind} {name}: missing apiVersion, kind or metadata.name")]
    Malformed { kind: String, name: String },
    #[error("applying {kind} {name}: {source}")]
    Write { kind: String, name: String, source: kube::Error },
    #[error("reading {kind} {name}: {source}")]
    Read { kind: String, name: String, source: kube::Error },
}

/// The identity of a rendered object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
}

impl Target {
    pub fn of(object: &Value) -> Result<Target, ApplyError> {
        let malformed = || ApplyError::Malformed {
            kind: object["kind"].as_str().unwrap_or("?").to_string(),
            name: object["metadata"]["name"].as_str().unwrap_or("?").to_string(),
        };
        let api_version = object["apiVersion"].as_str().ok_or_else(malformed)?;
        let kind = object["kind"].as_str().ok_or_else(malformed)?;
        let name = object["metadata"]["name"].as_str().ok_or_else(malformed)?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        Ok(Target {
            resource: ApiResource::from_gvk_with_plural(&gvk, &plural(kind)),
            namespace: object["metadata"]["namespace"].as_str().map(str::to_string),
            name: name.to_string(),
        })
    }

    pub fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        }
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.resource.kind, self.name)
    }

    fn read_error(&self, source: kube::Error) -> ApplyError {
        ApplyError::Read { kind: self.resource.kind.clone(), name: self.name.clone(), source }
    }

    fn write_error(&self, source: kube::Error) -> ApplyError {
        ApplyError::Write { kind: self.resource.kind.clone(), name: self.name.clone(), source }
    }
}

/// Plural resource names of the kinds the operator writes.
fn plural(kind: &str) -> String {
    match kind {
        "IPPool" => "ippools".into(),
        "IPAMConfig" => "ipamconfigs".into(),
        "BGPConfiguration" => "bgpconfigurations".into(),
        "TabbyStatus" => "tabbystatuses".into(),
        "NodeStatus" => "nodestatuses".into(),
        other => {
            let lower = other.to_ascii_lowercase();
            if lower.ends_with('s') { format!("{lower}es") } else { format!("{lower}s") }
        }
    }
}

/// Drops empty lists and nulls, which the API server would drop too (so they would never compare equal).
pub fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(Vec::is_empty)));
            map.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Whether every field of `desired` has the same value in `live`. Lists must match element by element;
/// fields the API server adds (defaults, status, other managers' fields) are ignored.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(k, v)| have.get(k).is_some_and(|h| is_subset(v, h)))
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// What one apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Created,
    Updated,
}

/// Server-side applies `desired` unless the live object already holds it.
pub async fn apply(client: &Client, desired: &Value) -> Result<Outcome, ApplyError> {
    let mut desired = desired.clone();
    normalize(&mut desired);
    let target = Target::of(&desired)?;
    let api = target.api(client);
    let live = api.get_opt(&target.name).await.map_err(|e| target.read_error(e))?;
    apply_over(&api, &target, &desired, live.as_ref()).await
}

/// [`apply`] with the live object already read (`None`: there is none); `desired` normalized.
async fn apply_over(
    api: &Api<DynamicObject>,
    target: &Target,
    desired: &Value,
    live: Option<&DynamicObject>,
) -> Result<Outcome, ApplyError> {
    if let Some(live) = live {
        let live = serde_json::to_value(live).expect("objects serialize");
        if is_subset(desired, &live) {
            return Ok(Outcome::Unchanged);
        }
    }
    let params = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    api.patch(&target.name, &params, &Patch::Apply(desired)).await.map_err(|e| target.write_error(e))?;
    Ok(if live.is_some() { Outcome::Updated } else { Outcome::Created })
}

/// Creates `object` when no object of its name exists; never changes an existing one.
pub async fn create_if_absent(client: &Client, object: &Value) -> Result<Outcome, ApplyError> {
    let target = Target::of(object)?;
    let api = target.api(client);
    if api.get_metadata_opt(&target.name).await.map_err(|e| target.read_error(e))?.is_some() {
        return Ok(Outcome::Unchanged);
    }
    create(&api, &target, object).await
}

/// Creates `object`; one that another writer created first is left as it is.
async fn create(api: &Api<DynamicObject>, target: &Target, object: &Value) -> Result<Outcome, ApplyError> {
    let obj: DynamicObject = serde_json::from_value(object.clone())
        .map_err(|_| ApplyError::Malformed { kind: target.resource.kind.clone(), name: target.name.clone() })?;
    match api
        .create(&PostParams { field_manager: Some(OPERATOR_FIELD_MANAGER.into()), ..Default::default() }, &obj)
        .await
    {
        Ok(_) => Ok(Outcome::Created),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Unchanged),
        Err(source) => Err(target.write_error(source)),
    }
}

/// Creates `object` when no object of its name exists, and applies it (as [`apply`]) while the live one
/// carries the operator's managed-by label; an object someone else created is never changed. The live
/// object is read once.
pub async fn create_or_update_own(client: &Client, object: &Value) -> Result<Outcome, ApplyError> {
    let mut desired = object.clone();
    normalize(&mut desired);
    let target = Target::of(&desired)?;
    let api = target.api(client);
    match api.get_opt(&target.name).await.map_err(|e| target.read_error(e))? {
        None => create(&api, &target, object).await,
        Some(live) if live.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(OPERATOR_FIELD_MANAGER) => {
            apply_over(&api, &target, &desired, Some(&live)).await
        }
        Some(_) => Ok(Outcome::Unchanged),
    }
}

/// Deletes the object `object` names; true when something was deleted, false when it was already gone.
pub async fn delete(client: &Client, object: &Value) -> Result<bool, ApplyError> {
    let target = Target::of(object)?;
    match target.api(client).delete(&target.name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(target.write_error(source)),
    }
}

/// True when the object `object` names exists.
pub async fn exists(client: &Client, object: &Value) -> Result<bool, ApplyError> {
    let target = Target::of(object)?;
    let found = target.api(client).get_metadata_opt(&target.name).await.map_err(|e| target.read_error(e))?;
    Ok(found.is_some_and(|m| m.metadata.deletion_timestamp.is_none() || !m.finalizers().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_additions_but_not_changes() {
        let desired = json!({"spec": {"a": 1, "list": [{"x": 1}], "s": "v"}});
        let live = json!({"metadata": {"uid": "u"}, "spec": {"a": 1.0, "list": [{"x": 1, "default": true}], "s": "v", "extra": 2}});
        assert!(is_subset(&desired, &live));
        assert!(!is_subset(&json!({"spec": {"a": 2}}), &live));
        assert!(!is_subset(&json!({"spec": {"list": [{"x": 1}, {"x": 2}]}}), &live), "a removed list element is drift");
        assert!(!is_subset(&json!({"spec": {"missing": 1}}), &live));
    }

    #[test]
    fn normalize_drops_what_the_server_drops() {
        let mut v = json!({"a": [], "b": null, "c": {"d": [], "e": 1}, "f": [{"g": null}]});
        normalize(&mut v);
        assert_eq!(v, json!({"c": {"e": 1}, "f": [{}]}));
    }

    #[test]
    fn targets() {
        let t = Target::of(
            &json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "n", "namespace": "ns"}}),
        )
        .unwrap();
        assert_eq!((t.resource.plural.as_str(), t.namespace.as_deref()), ("daemonsets", Some("ns")));
        let t = Target::of(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "n"}})).unwrap();
        assert_eq!(t.resource.plural, "clusterrolebindings");
        let t =
            Target::of(&json!({"apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "p"}})).unwrap();
        assert_eq!(t.resource.plural, "ippools");
        let t = Target::of(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "p"}})).unwrap();
        assert_eq!((t.resource.group.as_str(), t.resource.plural.as_str()), ("", "serviceaccounts"));
    }
}
