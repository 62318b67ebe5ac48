//! The install manifests against a real kube-apiserver: `kubectl create` and server-side apply of
//! operator.yaml, CRDs established and explained, the API server's own validation of the table of bad
//! objects, and the Helm chart's install and CRD upgrade.

use std::process::Command;

use serde_json::Value;
use tabby_e2e::cases::{ValidationCase as Case, load};
use tabby_e2e::{ControlPlane, Options, helm, repo_root, start_or_skip};

const CRD_COUNT: usize = 17;

fn wait_established(cp: &ControlPlane) {
    cp.kubectl_ok(&["wait", "--for=condition=Established", "crd", "-l", "!nonexistent", "--all", "--timeout=60s"]);
    let names = cp.kubectl_ok(&["get", "crd", "-o", "name"]);
    let tabby = names.lines().filter(|n| n.ends_with("tabby.dev")).count();
    assert_eq!(tabby, CRD_COUNT, "CRDs present: {names}");
}

#[tokio::test]
async fn operator_yaml_installs_with_create_and_with_server_side_apply() {
    let Some(cp) = start_or_skip("operator_yaml_installs", Options::default()).await else { return };
    let operator_yaml = repo_root().join("operator.yaml");
    let operator_yaml = operator_yaml.to_str().unwrap();

    cp.kubectl_ok(&["create", "-f", operator_yaml]);
    wait_established(&cp);
    // Re-applying the same file server-side (what GitOps tools do) must succeed without conflicts.
    cp.kubectl_ok(&["apply", "--server-side", "-f", operator_yaml]);
    let deployment = cp.kubectl_ok(&["get", "deployment", "-n", "tabby-operator", "tabby-operator", "-o", "json"]);
    let deployment: Value = serde_json::from_str(&deployment).unwrap();
    assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "tabby-operator");
    assert_eq!(deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
    cp.kubectl_ok(&["get", "clusterrole", "tabby-operator"]);

    // `kubectl explain` prints the doc comments of the Rust types.
    let explain = cp.kubectl_ok(&["explain", "installation.spec.network"]);
    assert!(explain.contains("ipPools"), "{explain}");
    assert!(explain.contains("IP pools the operator creates"), "{explain}");
    let explain = cp.kubectl_ok(&["explain", "ippool.spec.blockSize"]);
    assert!(explain.contains("Prefix length of the per-node blocks"), "{explain}");
    let explain = cp.kubectl_ok(&["explain", "globalnetworkpolicy.spec.ingress.action"]);
    assert!(explain.contains("Allow, Deny, Log"), "{explain}");

    // The example Installation is valid.
    cp.kubectl_ok(&["create", "-f", repo_root().join("custom-resources.yaml").to_str().unwrap()]);
    cp.stop();
}

fn cases(file: &str) -> Vec<Case> {
    load(file)
}

/// Runs `kubectl <verb> -f -` with `object` as JSON.
fn kubectl_stdin(cp: &ControlPlane, verb: &str, object: &Value) -> std::process::Output {
    cp.kubectl_stdin(&[verb, "-f", "-"], &object.to_string())
}

/// Creates the case's object, or, for an update case, creates the old object and replaces it.
fn submit(cp: &ControlPlane, case: &Case) -> std::process::Output {
    if let Some(old) = &case.old {
        let out = kubectl_stdin(cp, "create", old);
        assert!(
            out.status.success(),
            "{}: creating the old object: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    kubectl_stdin(cp, if case.old.is_some() { "replace" } else { "create" }, &case.object)
}

fn delete(cp: &ControlPlane, object: &Value) {
    let kind = object["kind"].as_str().unwrap().to_lowercase();
    let name = object["metadata"]["name"].as_str().unwrap();
    cp.kubectl_ok(&["delete", &kind, name, "--ignore-not-found", "--wait=true"]);
}

#[tokio::test]
async fn api_server_rejects_invalid_objects_naming_the_field() {
    let Some(cp) = start_or_skip("api_server_validation", Options::default()).await else { return };
    cp.kubectl_ok(&["create", "-f", repo_root().join("crds").to_str().unwrap()]);
    cp.kubectl_ok(&["create", "-f", repo_root().join("crds/optional").to_str().unwrap()]);
    wait_established(&cp);

    let mut failures = Vec::new();
    for case in cases("valid.yaml") {
        let out = submit(&cp, &case);
        if !out.status.success() {
            failures.push(format!("{}: rejected: {}", case.name, String::from_utf8_lossy(&out.stderr)));
        }
        delete(&cp, &case.object);
    }

    let table = cases("invalid.yaml");
    assert!(table.len() >= 15);
    for case in &table {
        let field = case.field.as_deref().unwrap();
        let out = submit(&cp, case);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted, expected an error on {field}", case.name));
        } else if !(stderr.contains(&format!("{field}:")) || stderr.contains(&format!("{field}["))) {
            failures.push(format!("{}: the error does not name {field}: {stderr}", case.name));
        }
        delete(&cp, &case.object);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    cp.stop();
}

fn helm_cmd(cp: &ControlPlane, args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .unwrap_or_else(|e| panic!("helm at {}: {e}", helm().display()));
    assert!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn helm_chart_installs_and_upgrades_crds() {
    if !helm().is_file() {
        assert!(!tabby_e2e::in_ci(), "helm is missing at {} (make helm)", helm().display());
        eprintln!(
            "SKIP helm_chart_installs_and_upgrades_crds: helm is missing at {} (run `make helm`)",
            helm().display()
        );
        return;
    }
    let Some(cp) = start_or_skip("helm_chart", Options::default()).await else { return };
    let chart = cp.dir().join("chart");
    copy_dir(&repo_root().join("charts/tabby-operator"), &chart);
    let chart_path = chart.to_str().unwrap();

    helm_cmd(&cp, &["lint", chart_path]);
    helm_cmd(&cp, &["template", "tabby", chart_path, "--set", "installation.enabled=true"]);
    helm_cmd(
        &cp,
        &[
            "install",
            "tabby",
            chart_path,
            "-n",
            "tabby-operator",
            "--create-namespace",
            "--set",
            "installation.enabled=true",
        ],
    );
    wait_established(&cp);
    cp.kubectl_ok(&["get", "deployment", "-n", "tabby-operator", "tabby-operator"]);
    // The Installation from values, for the operator to apply, is itself a valid Installation.
    let installation = cp.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        "tabby-operator",
        "tabby-installation",
        "-o",
        "jsonpath={.data.installation\\.yaml}",
    ]);
    let path = cp.dir().join("installation.yaml");
    std::fs::write(&path, &installation).unwrap();
    cp.kubectl_ok(&["create", "--dry-run=server", "-f", path.to_str().unwrap()]);

    // A new chart version changes a CRD: `helm upgrade` must apply it (Tigera's chart does not).
    let crd_file = chart.join("templates/crds/ippools.tabby.dev.yaml");
    let text = std::fs::read_to_string(&crd_file).unwrap();
    let changed = text.replace("IPPool is a range of pod addresses", "IPPool (upgraded) is a range of pod addresses");
    assert_ne!(text, changed, "the CRD template has the expected description");
    std::fs::write(&crd_file, changed).unwrap();
    helm_cmd(&cp, &["upgrade", "tabby", chart_path, "-n", "tabby-operator", "--set", "installation.enabled=true"]);
    let crd = cp.kubectl_ok(&[
        "get",
        "crd",
        "ippools.tabby.dev",
        "-o",
        "jsonpath={.spec.versions[0].schema.openAPIV3Schema.description}",
    ]);
    assert!(crd.contains("(upgraded)"), "CRD after upgrade: {crd}");

    // Uninstalling keeps the CRDs (and so every pool and block).
    helm_cmd(&cp, &["uninstall", "tabby", "-n", "tabby-operator"]);
    cp.kubectl_ok(&["get", "crd", "ippools.tabby.dev"]);
    cp.stop();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
