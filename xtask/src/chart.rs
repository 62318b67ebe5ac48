//! The Helm chart `charts/tabby-operator`: the same operator objects as operator.yaml, with values.
//!
//! Unlike Tigera's chart, the CRDs are templates (kept on uninstall), so `helm upgrade` updates them.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::install::{
    self, DeploymentParams, HEADER, IMAGE_REPOSITORY, VERSION, default_resources, default_tolerations,
};
use crate::{Error, Generated, yaml_stream};

const DIR: &str = "charts/tabby-operator";

/// A value in the rendered objects that becomes a Helm expression.
enum Template {
    /// `key: {{ expr }}`
    Scalar(&'static str),
    /// `key:` followed by `toYaml expr`, indented under the key.
    Block(&'static str),
}

const MARKERS: &[(&str, Template)] = &[
    ("HELM_NAMESPACE", Template::Scalar("{{ .Release.Namespace }}")),
    ("HELM_IMAGE", Template::Scalar("{{ include \"tabby-operator.image\" . | quote }}")),
    ("HELM_PULL_POLICY", Template::Scalar("{{ .Values.image.pullPolicy }}")),
    ("HELM_REPLICAS", Template::Scalar("{{ .Values.replicas }}")),
    ("HELM_LOG_LEVEL", Template::Scalar("{{ .Values.logLevel | quote }}")),
    ("HELM_RESOURCES", Template::Block(".Values.resources")),
    ("HELM_NODE_SELECTOR", Template::Block(".Values.nodeSelector")),
    ("HELM_TOLERATIONS", Template::Block(".Values.tolerations")),
    ("HELM_PULL_SECRETS", Template::Block(".Values.imagePullSecrets")),
];

/// Replaces each `key: MARKER` line with its Helm expression.
fn templatize(yaml: &str) -> String {
    let mut out = String::new();
    for line in yaml.lines() {
        let replaced = MARKERS.iter().find_map(|(marker, template)| {
            let (head, _) = line.split_once(&format!(": {marker}"))?;
            let indent = head.len() - head.trim_start().len();
            Some(match template {
                Template::Scalar(expr) => format!("{head}: {expr}"),
                Template::Block(expr) => {
                    format!("{head}:\n{}{{{{- toYaml {expr} | nindent {} }}}}", " ".repeat(indent + 2), indent + 2)
                }
            })
        });
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

pub fn files() -> Result<Vec<Generated>, Error> {
    let file = |name: &str, content: String| Generated { path: PathBuf::from(format!("{DIR}/{name}")), content };
    let mut files = vec![
        file("Chart.yaml", chart_yaml()),
        file("values.yaml", values_yaml()),
        file("values.schema.json", serde_json::to_string_pretty(&values_schema()).expect("schema serializes") + "\n"),
        file("templates/_helpers.tpl", HELPERS.to_string()),
        file("templates/NOTES.txt", NOTES.to_string()),
    ];
    for crd in tabby_api::crds::all() {
        let name = crd.metadata.name.clone().expect("CRD has a name");
        let mut crd = serde_json::to_value(crd).expect("CRDs serialize");
        // Kept on `helm uninstall`: deleting a CRD deletes every pool, block and setting with it.
        crd["metadata"]["annotations"] = json!({"helm.sh/resource-policy": "keep"});
        let body = yaml_stream("chart crd", &[crd])?;
        files.push(file(
            &format!("templates/crds/{name}.yaml"),
            format!("{{{{- if .Values.crds.install }}}}\n{body}{{{{- end }}}}\n"),
        ));
    }
    let params = DeploymentParams {
        namespace: "HELM_NAMESPACE",
        image: json!("HELM_IMAGE"),
        image_pull_policy: json!("HELM_PULL_POLICY"),
        replicas: json!("HELM_REPLICAS"),
        resources: json!("HELM_RESOURCES"),
        node_selector: json!("HELM_NODE_SELECTOR"),
        tolerations: json!("HELM_TOLERATIONS"),
        image_pull_secrets: json!("HELM_PULL_SECRETS"),
        log_level: json!("HELM_LOG_LEVEL"),
    };
    files.push(file(
        "templates/rbac.yaml",
        HEADER.to_string() + &templatize(&yaml_stream("chart rbac", &install::operator_rbac("HELM_NAMESPACE"))?),
    ));
    files.push(file(
        "templates/deployment.yaml",
        HEADER.to_string() + &templatize(&yaml_stream("chart deployment", &[install::operator_deployment(&params)])?),
    ));
    files.push(file("templates/installation.yaml", INSTALLATION.to_string()));
    Ok(files)
}

fn chart_yaml() -> String {
    let version = VERSION.trim_start_matches('v');
    format!(
        "{HEADER}apiVersion: v2
name: tabby-operator
description: Tabby, a Kubernetes pod network in Rust (block IPAM, BGP, VXLAN), installed by its operator.
type: application
version: {version}
appVersion: \"{VERSION}\"
keywords: [cni, networking, bgp, ipam, operator]
"
    )
}

fn values_yaml() -> String {
    let values = json!({
        "image": {"repository": IMAGE_REPOSITORY, "tag": "", "pullPolicy": "IfNotPresent"},
        "imagePullSecrets": [],
        "replicas": 1,
        "logLevel": "info",
        "resources": default_resources(),
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": default_tolerations(),
        "crds": {"install": true},
        "installation": {"enabled": false, "spec": {}},
    });
    format!(
        "{HEADER}# image.tag empty: the chart's appVersion. installation.enabled creates Installation/default from
# installation.spec (the same fields as custom-resources.yaml).
{}",
        serde_yaml::to_string(&values).expect("values serialize")
    )
}

/// values.schema.json: Helm refuses values that do not match. `installation.spec` is checked against the
/// Installation CRD's own schema, so a typo in a chart value fails at `helm install`, not in the cluster.
fn values_schema() -> Value {
    use kube::CustomResourceExt;
    let crd = tabby_api::Installation::crd();
    let spec_schema = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema")
            .properties
            .as_ref()
            .expect("properties")["spec"],
    )
    .expect("schema serializes");
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "$schema": "https://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "image": {"type": "object", "additionalProperties": false, "properties": {
                "repository": {"type": "string", "minLength": 1},
                "tag": {"type": "string"},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}
            }},
            "imagePullSecrets": {"type": "array", "items": {"type": "object", "required": ["name"],
                                 "properties": {"name": {"type": "string"}}}},
            "replicas": {"type": "integer", "minimum": 1},
            "logLevel": {"enum": ["error", "warn", "info", "debug", "trace"]},
            "resources": {"type": "object"},
            "nodeSelector": strings,
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "crds": {"type": "object", "additionalProperties": false,
                     "properties": {"install": {"type": "boolean"}}},
            "installation": {"type": "object", "additionalProperties": false, "properties": {
                "enabled": {"type": "boolean"},
                "spec": spec_schema
            }}
        }
    })
}

const HELPERS: &str = r#"{{/* Generated by `make manifests` from Tabby's Rust types. Do not edit. */}}
{{- define "tabby-operator.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
"#;

const NOTES: &str = r#"Tabby's operator is installed in namespace {{ .Release.Namespace }}.
{{- if .Values.installation.enabled }}
Installation/default was created; wait for the network with:
  kubectl wait --for=condition=Available tabbystatus/network --timeout=5m
{{- else }}
Create the network with:
  kubectl create -f custom-resources.yaml
then wait for it with:
  kubectl wait --for=condition=Available tabbystatus/network --timeout=5m
{{- end }}
"#;

// Helm maps every template to an API before it applies any, so an Installation cannot sit in the same
// release as the CRD that defines it (and CRDs must be templates, or `helm upgrade` never updates them).
// The chart hands the Installation to the operator instead: a ConfigMap whose spec the operator applies as
// Installation/default with its own field manager, on install and on every `helm upgrade`.
const INSTALLATION: &str = r#"{{/* Generated by `make manifests` from Tabby's Rust types. Do not edit. */}}
{{- if .Values.installation.enabled }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: tabby-installation
  namespace: {{ .Release.Namespace }}
  labels:
    app.kubernetes.io/name: tabby-operator
    app.kubernetes.io/part-of: tabby
data:
  installation.yaml: |
    apiVersion: operator.tabby.dev/v1
    kind: Installation
    metadata:
      name: default
    spec:
      {{- toYaml .Values.installation.spec | nindent 6 }}
{{- end }}
"#;
