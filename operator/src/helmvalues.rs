//! The Installation from Helm values: the chart writes it into the ConfigMap `tabby-installation` in the
//! operator's namespace (Helm cannot create a custom resource in the release that installs its CRD), and
//! the operator applies it as Installation/default with its own field manager whenever it changes. Fields
//! set by other managers (kubectl edit, GitOps) are left alone.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tabby_api::Installation;

/// Name of the chart's ConfigMap.
pub const CONFIGMAP: &str = "tabby-installation";
/// Key holding the Installation manifest.
pub const KEY: &str = "installation.yaml";
/// Field manager of the fields that come from Helm values.
pub const FIELD_MANAGER: &str = "tabby-helm-values";

#[derive(Debug, thiserror::Error)]
pub enum HelmValuesError {
    #[error("ConfigMap {CONFIGMAP}: {KEY} is not an Installation: {0}")]
    Parse(String),
    #[error("applying Installation/default from {CONFIGMAP}: {0}")]
    Apply(kube::Error),
}

/// The Installation a ConfigMap carries.
pub fn installation_from(cm: &ConfigMap) -> Result<Option<Value>, HelmValuesError> {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(KEY)) else { return Ok(None) };
    let value: Value = serde_yaml::from_str(text).map_err(|e| HelmValuesError::Parse(e.to_string()))?;
    serde_json::from_value::<Installation>(value.clone()).map_err(|e| HelmValuesError::Parse(e.to_string()))?;
    Ok(Some(value))
}

async fn apply(client: &Client, cm: &ConfigMap) -> Result<(), HelmValuesError> {
    let Some(desired) = installation_from(cm)? else { return Ok(()) };
    let api: Api<Installation> = Api::all(client.clone());
    if let Ok(Some(live)) = api.get_opt("default").await {
        let live = serde_json::to_value(live).expect("objects serialize");
        if crate::apply::is_subset(&desired["spec"], &live["spec"]) {
            return Ok(());
        }
    }
    api.patch("default", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired))
        .await
        .map_err(HelmValuesError::Apply)?;
    tracing::info!("applied Installation/default from Helm values");
    Ok(())
}

/// Watches the chart's ConfigMap in `namespace` and applies its Installation on every change.
pub async fn run(client: Client, namespace: String) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}"));
    let mut events = watcher::watcher(api, config).boxed();
    while let Some(event) = events.next().await {
        let cm = match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => cm,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "watching {CONFIGMAP}");
                continue;
            }
        };
        if let Err(e) = apply(&client, &cm).await {
            tracing::warn!(error = %e, "Helm values");
        }
    }
}
