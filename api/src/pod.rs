//! A pod as Tabby reads it ([`LeanPod`]): the fields IPAM, the leak rule and network policy use, read
//! straight from the API's JSON (every other field skipped while parsing). k8s-openapi's `Pod` is 2,176
//! bytes before any field is set (every optional part of its spec and status is inline), so a cache of
//! 10,000 pods costs tens of MiB as `Pod` and a fraction of that as this.
//!
//! It is the same `v1/pods` resource: `Api<LeanPod>` lists and watches pods, and a `Pod` converts
//! ([`From<&Pod>`]) for code that already holds one (the CLI, tests).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A pod: metadata (labels are selected, annotations choose pools and addresses), and the parts of its
/// spec and status Tabby reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct LeanPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<LeanPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<LeanPodStatus>,
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

fn lean_container(c: &Container) -> LeanContainer {
    LeanContainer { name: c.name.clone(), ports: c.ports.clone() }
}

impl From<&Pod> for LeanPod {
    fn from(p: &Pod) -> LeanPod {
        LeanPod {
            metadata: p.metadata.clone(),
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
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}, "annotations": {"k": "v"}},
            "spec": {"nodeName": "n1", "hostNetwork": false, "serviceAccountName": "web",
                     "containers": [{"name": "c", "image": "nginx", "resources": {"limits": {"cpu": "1"}},
                                     "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}],
                     "tolerations": [{"operator": "Exists"}], "affinity": {}},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        let lean: LeanPod = serde_json::from_value(v.clone()).unwrap();
        let full: Pod = serde_json::from_value(v).unwrap();
        assert_eq!(lean, LeanPod::from(&full), "parsed and converted agree");
        let spec = lean.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers[0].ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
        assert_eq!(lean.status.as_ref().unwrap().pod_ips.as_ref().unwrap().len(), 2);
        assert!(std::mem::size_of::<LeanPod>() * 3 < std::mem::size_of::<Pod>(), "a fraction of Pod");
        assert_eq!(<LeanPod as kube::Resource>::url_path(&(), Some("x")), "/api/v1/namespaces/x/pods");
    }
}
