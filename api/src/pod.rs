//! A pod as Tabby reads it ([`LeanPod`]): the fields IPAM, the leak rule and network policy use, read
//! straight from the API's JSON (every other field skipped while parsing). k8s-openapi's `Pod` is 2,176
//! bytes before any field is set (every optional part of its spec and status is inline), so a cache of
//! 10,000 pods costs tens of MiB as `Pod` and a fraction of that as this.
//!
//! It is the same `v1/pods` resource: `Api<LeanPod>` lists and watches pods, and a `Pod` converts
//! ([`From<&Pod>`]) for code that already holds one (the CLI, tests).
//!
//! Its metadata is read the same way ([`Meta`]): name, namespace, uid, resource version, labels,
//! annotations and deletion time. Managed fields (a tree of every field each client set, the largest part
//! of a small pod's JSON), owner references and kubectl's last-applied copy are skipped unparsed, so
//! listing 10,000 pods never builds them only to free them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A pod: metadata (labels are selected, annotations choose pools and addresses), and the parts of its
/// spec and status Tabby reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct LeanPod {
    #[serde(default, deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<LeanPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<LeanPodStatus>,
    /// Its labels once [`LeanPod::compact_labels`] moved them out of the metadata (what the agent's cache
    /// keeps): policy's endpoint of the pod shares them instead of copying a map.
    #[serde(skip)]
    pub labels: LabelSet,
}

impl LeanPod {
    /// Moves the metadata's labels into [`LeanPod::labels`].
    pub fn compact_labels(&mut self) {
        if let Some(l) = self.metadata.labels.take() {
            self.labels = LabelSet::from(&l);
        }
    }

    /// Its labels, wherever they are (a pod straight from the API has them in its metadata).
    pub fn label_set(&self) -> LabelSet {
        match &self.metadata.labels {
            Some(l) => LabelSet::from(l),
            None => self.labels.clone(),
        }
    }
}

/// Labels, compact and shared: sorted `(key, value)` pairs in one reference-counted slice. A `BTreeMap`
/// of two labels allocates a whole node (about 540 bytes) before its strings; this costs the strings and
/// one small slice, and a clone is a pointer.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Arc<[(Box<str>, Box<str>)]>);

impl LabelSet {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*self.0[i].1)
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `key` (a new slice: label sets change rarely).
    pub fn insert(&mut self, key: String, value: String) {
        let mut m = self.to_map();
        m.insert(key, value);
        *self = LabelSet::from(&m);
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

impl From<&BTreeMap<String, String>> for LabelSet {
    fn from(m: &BTreeMap<String, String>) -> LabelSet {
        LabelSet(m.iter().map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str()))).collect())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for LabelSet {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(it: I) -> LabelSet {
        let m: BTreeMap<String, String> = it.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        LabelSet::from(&m)
    }
}

impl<const N: usize> From<[(String, String); N]> for LabelSet {
    fn from(a: [(String, String); N]) -> LabelSet {
        a.into_iter().collect()
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl crate::selector::LabelSource for LabelSet {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// Node, host network, service account and the containers' ports.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<LeanContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<LeanContainer>>,
}

/// A container's name and ports (named ports are matched by policy).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct LeanContainer {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ContainerPort>>,
}

/// Phase and addresses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(rename = "podIP", default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs", default, skip_serializing_if = "Option::is_none")]
    pub pod_ips: Option<Vec<PodIP>>,
}

impl kube::Resource for LeanPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// kubectl's copy of the whole object, in objects created with `kubectl apply`.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The metadata of a pod that Tabby keeps.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(deserialize_with = "annotations")]
    annotations: Option<BTreeMap<String, String>>,
    deletion_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl From<Meta> for ObjectMeta {
    fn from(m: Meta) -> ObjectMeta {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            labels: m.labels,
            annotations: m.annotations,
            deletion_timestamp: m.deletion_timestamp,
            ..ObjectMeta::default()
        }
    }
}

/// What [`Meta`] keeps of `m`.
fn lean_meta(m: &ObjectMeta) -> ObjectMeta {
    let mut annotations = m.annotations.clone();
    if let Some(a) = &mut annotations {
        a.remove(LAST_APPLIED);
    }
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        labels: m.labels.clone(),
        annotations,
        deletion_timestamp: m.deletion_timestamp.clone(),
        ..ObjectMeta::default()
    }
}

fn lean_metadata<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    Meta::deserialize(d).map(ObjectMeta::from)
}

/// Annotations without kubectl's last-applied copy (its value is skipped, not read into a string).
fn annotations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Annotations;
    impl<'de> serde::de::Visitor<'de> for Annotations {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                if k == LAST_APPLIED {
                    map.next_value::<serde::de::IgnoredAny>()?;
                } else {
                    out.insert(k.into_owned(), map.next_value()?);
                }
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Annotations)
}

fn lean_container(c: &Container) -> LeanContainer {
    LeanContainer { name: c.name.clone(), ports: c.ports.clone() }
}

impl From<&Pod> for LeanPod {
    fn from(p: &Pod) -> LeanPod {
        LeanPod {
            metadata: lean_meta(&p.metadata),
            spec: p.spec.as_ref().map(|s| LeanPodSpec {
                node_name: s.node_name.clone(),
                host_network: s.host_network,
                service_account_name: s.service_account_name.clone(),
                containers: s.containers.iter().map(lean_container).collect(),
                init_containers: s.init_containers.as_ref().map(|v| v.iter().map(lean_container).collect()),
            }),
            status: p.status.as_ref().map(|s| LeanPodStatus {
                phase: s.phase.clone(),
                pod_ip: s.pod_ip.clone(),
                pod_ips: s.pod_ips.clone(),
            }),
            labels: LabelSet::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_what_tabby_uses_and_skips_the_rest() {
        let v = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "uid": "u1", "resourceVersion": "7", "labels": {"app": "web"},
                         "annotations": {"k": "v", LAST_APPLIED: "{\"big\": 1}"},
                         "creationTimestamp": "2026-12-06T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u0"}],
                         "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]},
            "spec": {"nodeName": "n1", "hostNetwork": false, "serviceAccountName": "web",
                     "containers": [{"name": "c", "image": "nginx", "resources": {"limits": {"cpu": "1"}},
                                     "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}],
                     "tolerations": [{"operator": "Exists"}], "affinity": {}},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        let lean: LeanPod = serde_json::from_value(v.clone()).unwrap();
        let full: Pod = serde_json::from_value(v).unwrap();
        assert_eq!(lean, LeanPod::from(&full), "parsed and converted agree");
        let m = &lean.metadata;
        assert_eq!((m.uid.as_deref(), m.resource_version.as_deref()), (Some("u1"), Some("7")), "the cache's keys");
        assert_eq!(m.annotations.as_ref().map(|a| a.len()), Some(1), "no last-applied copy");
        assert!(m.managed_fields.is_none() && m.owner_references.is_none() && m.creation_timestamp.is_none());
        let no_meta: LeanPod = serde_json::from_value(json!({"metadata": {"annotations": null}})).unwrap();
        assert!(no_meta.metadata.annotations.is_none());
        let spec = lean.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers[0].ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
        assert_eq!(lean.status.as_ref().unwrap().pod_ips.as_ref().unwrap().len(), 2);
        assert!(std::mem::size_of::<LeanPod>() * 3 < std::mem::size_of::<Pod>(), "a fraction of Pod");
        // Compacted, the labels move out of the metadata and read the same.
        let mut compact = lean.clone();
        compact.compact_labels();
        assert!(compact.metadata.labels.is_none());
        assert_eq!(compact.label_set(), lean.label_set());
        assert_eq!(compact.labels.get("app"), Some("web"));
        assert_eq!(compact.labels.get("zone"), None);
        assert_eq!(<LeanPod as kube::Resource>::url_path(&(), Some("x")), "/api/v1/namespaces/x/pods");
    }
}
