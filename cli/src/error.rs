//! The errors a user sees: each says what went wrong and what to do next.

use std::path::PathBuf;

/// Everything that can make a command fail (exit code 1; usage errors exit 2 through clap).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no kubeconfig could be loaded: {detail}\nPoint to one with --kubeconfig FILE or the KUBECONFIG variable.")]
    NoKubeconfig { detail: String },

    #[error(
        "cannot reach the cluster at {server}: {detail}\nCheck that the cluster is up and that your kubeconfig and context are right (kubectl config current-context; kubectl cluster-info)."
    )]
    Unreachable { server: String, detail: String },

    #[error(
        "the cluster at {server} rejected your credentials: {detail}\nRefresh them (kubectl config view --minify) or pick another --context."
    )]
    Unauthorized { server: String, detail: String },

    #[error("you are not allowed to {action}: {detail}\nAsk a cluster admin for read access to Tabby's resources.")]
    Forbidden { action: String, detail: String },

    #[error(
        "Tabby is not installed in this cluster: the API has no {resource} resource (its CRD is missing).\nInstall Tabby first: kubectl create -f operator.yaml (or helm install tabby charts/tabby), then create an Installation."
    )]
    NotInstalled { resource: String },

    #[error(
        "Tabby's CRDs are installed but there is no Installation named \"default\", so the operator has not set up the network.\nCreate one: kubectl create -f custom-resources.yaml"
    )]
    InstallationMissing,

    #[error(
        "unknown resource type {given:?}.\nKnown types: ippool, ipamblock, blockaffinity, bgpconfig, bgppeer, nodestatus, workloadendpoint, networkpolicy, globalnetworkpolicy, tier, globalnetworkset (plurals and short names work too)."
    )]
    UnknownResource { given: String },

    #[error("{0}")]
    Trace(String),

    #[error("{kind} {name:?} not found.\nList what exists with: kubectl tabby get {resource}")]
    ObjectNotFound { kind: &'static str, name: String, resource: &'static str },

    #[error("node {node:?} not found: {detail}")]
    NodeNotFound { node: String, detail: String },

    #[error("{0}")]
    Ipam(String),

    #[error("the API server refused to {action}: {detail}")]
    Api { action: String, detail: String },

    #[error("could not read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },

    #[error("could not write {path}: {source}")]
    WriteFile { path: PathBuf, source: std::io::Error },

    #[error("{path} is not a report written by `kubectl tabby ipam check -o`: {detail}")]
    BadReport { path: PathBuf, detail: String },

    #[error("could not format the output: {0}")]
    Output(String),

    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Result of a command.
pub type Result<T> = std::result::Result<T, Error>;
