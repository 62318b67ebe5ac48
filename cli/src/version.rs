//! `version`: this client, and what runs in the cluster.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodSpec;
use tabby_api::names::{DEFAULT_NAME, NODE_DAEMONSET, OPERATOR_NAMESPACE, SYSTEM_NAMESPACE};
use tabby_api::{Installation, condition};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::output;

/// The operator's Deployment, named like its namespace.
pub const OPERATOR_DEPLOYMENT: &str = "tabby-operator";

/// `Client Version: …` alone.
pub fn client_line() -> String {
    format!("Client Version: v{}\n", env!("CARGO_PKG_VERSION"))
}

fn images(spec: Option<&PodSpec>) -> String {
    let images: Vec<String> =
        spec.map(|s| s.containers.iter().filter_map(|c| c.image.clone()).collect()).unwrap_or_default();
    if images.is_empty() { "<no image>".into() } else { images.join(", ") }
}

/// A read `version` may do without: not being allowed to read it becomes `Ok(Err(reason))`; other errors
/// (an unreachable cluster) stay errors.
fn readable<T>(result: Result<T>) -> Result<std::result::Result<T, String>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(Error::Forbidden { .. }) => Ok(Err("you are not allowed to read it".into())),
        Err(e) => Err(e),
    }
}

/// Runs `version`: the client line always, then the cluster's parts (an unreachable cluster is an error).
pub async fn run(cluster: Option<&Cluster>) -> Result<()> {
    output::print(&client_line());
    let Some(cluster) = cluster else { return Ok(()) };
    output::print(&format!("Cluster: {}\n", cluster.server));
    let operator = readable(cluster.get_namespaced::<Deployment>(OPERATOR_NAMESPACE, OPERATOR_DEPLOYMENT).await)?;
    let line = match operator {
        Err(why) => format!("Operator: unknown ({why})\n"),
        Ok(Some(d)) => {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            format!(
                "Operator: {} ({ready}/{want} ready)\n",
                images(d.spec.as_ref().and_then(|s| s.template.spec.as_ref()))
            )
        }
        Ok(None) => {
            format!("Operator: not found (no Deployment {OPERATOR_DEPLOYMENT} in namespace {OPERATOR_NAMESPACE})\n")
        }
    };
    output::print(&line);
    let line = match readable(cluster.get_namespaced::<DaemonSet>(SYSTEM_NAMESPACE, NODE_DAEMONSET).await)? {
        Err(why) => format!("Agent: unknown ({why})\n"),
        Ok(Some(ds)) => {
            let st = ds.status.unwrap_or_default();
            format!(
                "Agent: {} ({}/{} nodes ready)\n",
                images(ds.spec.as_ref().and_then(|s| s.template.spec.as_ref())),
                st.number_ready,
                st.desired_number_scheduled
            )
        }
        Ok(None) => format!("Agent: not found (no DaemonSet {NODE_DAEMONSET} in namespace {SYSTEM_NAMESPACE})\n"),
    };
    output::print(&line);
    // Only informative: a cluster without the CRDs or the Installation still gets the lines above.
    if let Ok(Some(i)) = cluster.get::<Installation>(DEFAULT_NAME).await {
        let st = i.status.unwrap_or_default();
        let ready = condition::find(&st.conditions, condition::READY).map(|c| c.status.clone());
        output::print(&format!(
            "Installation: version {}, Ready {}\n",
            st.version.as_deref().unwrap_or("unknown"),
            ready.as_deref().unwrap_or("Unknown")
        ));
    }
    Ok(())
}
