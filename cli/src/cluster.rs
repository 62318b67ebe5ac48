//! Access to the cluster: the client from kubeconfig and context, reads and writes whose errors become
//! [`Error`]s a person understands.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tabby_api::Installation;
use tabby_api::names::DEFAULT_NAME;

use crate::args::Global;
use crate::error::{Error, Result};

/// A connected client and the context's defaults.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The API server's URL, for messages.
    pub server: String,
    /// The namespace `-n` names, else the context's.
    pub namespace: String,
    /// Whether `-A` was given.
    pub all_namespaces: bool,
}

/// A cluster-scoped or namespaced Kubernetes type the CLI reads.
pub trait Kind: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug {}
impl<K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug> Kind for K {}

impl Cluster {
    /// Builds a client like kubectl: `--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config` (or the in-cluster
    /// service account); `--context`, else the current context.
    pub async fn connect(global: &Global) -> Result<Cluster> {
        let options = KubeConfigOptions { context: global.context.clone(), ..Default::default() };
        let no_config = |e: &dyn std::fmt::Display| Error::NoKubeconfig { detail: e.to_string() };
        let config = match &global.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| no_config(&e))?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| no_config(&e))?
            }
            None if global.context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| no_config(&e))?,
            None => Config::infer().await.map_err(|e| no_config(&e))?,
        };
        let server = config.cluster_url.to_string().trim_end_matches('/').to_string();
        let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)
            .map_err(|e| Error::Unreachable { server: server.clone(), detail: e.to_string() })?;
        Ok(Cluster { client, server, namespace, all_namespaces: global.all_namespaces })
    }

    /// Turns a kube error into one a person can act on; `action` says what was being done.
    pub fn explain(&self, e: kube::Error, action: &str) -> Error {
        match e {
            kube::Error::Api(status) => match status.code {
                401 => Error::Unauthorized { server: self.server.clone(), detail: status.message },
                403 => Error::Forbidden { action: action.to_string(), detail: status.message },
                _ => Error::Api { action: action.to_string(), detail: status.message },
            },
            other => Error::Unreachable { server: self.server.clone(), detail: chain(&other) },
        }
    }

    fn cluster_api<K: Kind>(&self) -> Api<K> {
        Api::all(self.client.clone())
    }

    /// Every object of a Tabby CRD; a missing CRD is [`Error::NotInstalled`].
    pub async fn list<K: Kind>(&self) -> Result<Vec<K>> {
        let plural = K::plural(&()).to_string();
        match self.cluster_api::<K>().list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::NotInstalled { resource: crd_name::<K>() }),
            Err(e) => Err(self.explain(e, &format!("list {plural}"))),
        }
    }

    /// One object of a cluster-scoped Tabby CRD, `None` when absent; a missing CRD is [`Error::NotInstalled`].
    pub async fn get<K: Kind>(&self, name: &str) -> Result<Option<K>> {
        let plural = K::plural(&()).to_string();
        match self.cluster_api::<K>().get_opt(name).await {
            Ok(Some(o)) => Ok(Some(o)),
            // A 404 means either "no such object" or "no such type": listing tells them apart.
            Ok(None) => self.list_one::<K>().await.map(|_| None),
            Err(kube::Error::Api(s)) if s.code == 404 => self.list_one::<K>().await.map(|_| None),
            Err(e) => Err(self.explain(e, &format!("get {plural} {name}"))),
        }
    }

    async fn list_one<K: Kind>(&self) -> Result<()> {
        match self.cluster_api::<K>().list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::NotInstalled { resource: crd_name::<K>() }),
            Err(e) => Err(self.explain(e, &format!("list {}", K::plural(&())))),
        }
    }

    /// Replaces a cluster-scoped object if its resourceVersion is still the one read (compare-and-swap).
    /// `Ok(false)` means someone else wrote it first: read again and retry.
    pub async fn replace<K: Kind>(&self, object: &K) -> Result<bool> {
        let name = object.meta().name.clone().unwrap_or_default();
        match self.cluster_api::<K>().replace(&name, &PostParams::default(), object).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.explain(e, &format!("update {} {name}", K::plural(&())))),
        }
    }

    /// Deletes a cluster-scoped object; absent is fine.
    pub async fn delete<K: Kind>(&self, name: &str) -> Result<()> {
        match self.cluster_api::<K>().delete(name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.explain(e, &format!("delete {} {name}", K::plural(&())))),
        }
    }

    /// Pods of the selected namespace, or of all with `all`.
    pub async fn pods(&self, all: bool) -> Result<Vec<Pod>> {
        let api: Api<Pod> =
            if all { Api::all(self.client.clone()) } else { Api::namespaced(self.client.clone(), &self.namespace) };
        api.list(&ListParams::default()).await.map(|l| l.items).map_err(|e| self.explain(e, "list pods"))
    }

    /// The names of the cluster's Nodes.
    pub async fn node_names(&self) -> Result<Vec<String>> {
        let api: Api<Node> = Api::all(self.client.clone());
        let nodes = api.list_metadata(&ListParams::default()).await.map_err(|e| self.explain(e, "list nodes"))?;
        Ok(nodes.items.into_iter().filter_map(|n| n.metadata.name).collect())
    }

    /// A namespaced object of a built-in type, `None` when absent.
    pub async fn get_namespaced<K>(&self, namespace: &str, name: &str) -> Result<Option<K>>
    where
        K: Kind + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(|e| self.explain(e, &format!("get {} {namespace}/{name}", K::plural(&()))))
    }

    /// Fails with [`Error::InstallationMissing`] when Tabby's CRDs exist but no Installation does.
    pub async fn require_installation(&self) -> Result<()> {
        match self.get::<Installation>(DEFAULT_NAME).await? {
            Some(_) => Ok(()),
            None => Err(Error::InstallationMissing),
        }
    }
}

/// `<plural>.<group>`, the name of a CRD.
fn crd_name<K: Kind>() -> String {
    format!("{}.{}", K::plural(&()), K::group(&()))
}

/// An error and its causes on one line (kube's own message hides the "connection refused" underneath).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
