//! The operator against a real control plane (kube-apiserver, controller-manager, scheduler); test code
//! plays the kubelet for agent pods.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tabby_testkit::repo_root;

const WAIT: Duration = Duration::from_secs(60);

fn get_json(cp: &tabby_testkit::ControlPlane, args: &[&str]) -> Option<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = cp.kubectl(&full);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

async fn available(cp: &tabby_testkit::ControlPlane) {
    eventually("TabbyStatus network Available", WAIT, || async {
        tabbystatus_condition(cp, "Available").filter(|(s, _, _)| s == "True")
    })
    .await;
}

/// Sets the Installation's log severity and waits for the DaemonSet to carry it (a reconcile ran).
async fn log_severity(cp: &tabby_testkit::ControlPlane, severity: &str) -> Value {
    let patch = json!({"spec": {"logging": {"severity": severity}}}).to_string();
    cp.kubectl_ok(&["patch", "installation", "default", "--type=merge", "-p", &patch]);
    let want = severity.to_ascii_lowercase();
    eventually(&format!("log level {severity} applied"), WAIT, || async {
        get_json(cp, &["daemonset", "-n", "tabby-system", "tabby-node"])
            .filter(|d| agent_env(d, "TABBY_LOG_SEVERITY").as_deref() == Some(want.as_str()))
    })
    .await
}

fn agent_env(ds: &Value, name: &str) -> Option<String> {
    ds["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_everything_and_becomes_ready_then_rolls_edits() {
    let Some(cp) = cluster("operator_install", 2).await else { return };
    let operator = Operator::start(cp.client());
    let kubelet = fake_kubelet(cp.client());
    cp.kubectl_ok(&["create", "-f", repo_root().join("custom-resources.yaml").to_str().unwrap()]);

    let ds = eventually("DaemonSet tabby-node", WAIT, || async {
        get_json(&cp, &["daemonset", "-n", "tabby-system", "tabby-node"])
    })
    .await;
    let ns = get_json(&cp, &["namespace", "tabby-system"]).expect("namespace tabby-system");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    for (kind, name) in [
        ("serviceaccount", "tabby-node"),
        ("configmap", "tabby-config"),
        ("role", "tabby-node"),
        ("rolebinding", "tabby-node"),
    ] {
        assert!(get_json(&cp, &[kind, "-n", "tabby-system", name]).is_some(), "{kind} {name}");
    }
    for (kind, name) in [
        ("clusterrole", "tabby-node"),
        ("clusterrolebinding", "tabby-node"),
        ("ipamconfig", "default"),
        ("bgpconfiguration", "default"),
    ] {
        assert!(get_json(&cp, &[kind, name]).is_some(), "{kind} {name}");
    }
    let pool = get_json(&cp, &["ippool", "default-ipv4-ippool"]).expect("the Installation's pool");
    assert_eq!(pool["spec"]["cidr"], "192.168.0.0/16");
    assert_eq!(pool["spec"]["natOutgoing"], true);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["initContainers"][0]["command"], json!(["tabby-agent", "install-cni"]));
    assert_eq!(pod["containers"][0]["image"], IMAGE);
    let conflist =
        get_json(&cp, &["configmap", "-n", "tabby-system", "tabby-config"]).unwrap()["data"]["cni_network_config"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(conflist.contains("\"portmap\""), "hostPorts Enabled chains portmap: {conflist}");

    // The agent's permissions: what it needs and nothing cluster-wide about secrets.
    let can = cp.kubectl_ok(&["auth", "can-i", "--list", "--as=system:serviceaccount:tabby-system:tabby-node"]);
    assert!(can.contains("ipamblocks.tabby.dev"), "{can}");
    assert!(can.contains("nodestatuses.tabby.dev/status"), "{can}");
    assert!(!can.lines().any(|l| l.starts_with("secrets ")), "no cluster-wide secrets: {can}");
    let can_ns = cp.kubectl_ok(&[
        "auth",
        "can-i",
        "--list",
        "-n",
        "tabby-system",
        "--as=system:serviceaccount:tabby-system:tabby-node",
    ]);
    assert!(can_ns.lines().any(|l| l.starts_with("secrets ")), "secrets in tabby-system: {can_ns}");

    available(&cp).await;
    cp.kubectl_ok(&["wait", "--for=condition=Available", "tabbystatus/network", "--timeout=30s"]);
    let inst = get_json(&cp, &["installation", "default"]).unwrap();
    let ready = inst["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "True", "{inst}");
    assert_eq!(inst["status"]["nodes"], json!({"desired": 2, "ready": 2}));
    assert_eq!(inst["status"]["computed"]["network"]["bgp"], "Enabled");
    assert!(inst["spec"].get("cni").is_none(), "defaults stay out of the spec");

    // Edits roll the DaemonSet and show Progressing, then Ready again. The kubelet pauses meanwhile, so
    // the rollout cannot finish before the test has seen Progressing.
    kubelet.abort();
    let hash_before = ds["spec"]["template"]["metadata"]["annotations"]["tabby.dev/cni-config-hash"].clone();
    cp.kubectl_ok(&["patch", "installation", "default", "--type=merge", "-p",
        r#"{"spec":{"network":{"mtu":1400,"ipPools":[{"name":"default-ipv4-ippool","cidr":"192.168.0.0/16","blockSize":26,"encapsulation":"None","natOutgoing":"Disabled","nodeSelector":"all()"}]},"agentDaemonSet":{"env":[{"name":"TABBY_EXTRA","value":"yes"}]}}}"#]);
    let ds = eventually("DaemonSet with MTU 1400", WAIT, || async {
        get_json(&cp, &["daemonset", "-n", "tabby-system", "tabby-node"])
            .filter(|d| agent_env(d, "TABBY_MTU").as_deref() == Some("1400"))
    })
    .await;
    assert_eq!(agent_env(&ds, "TABBY_EXTRA").as_deref(), Some("yes"));
    assert_ne!(
        ds["spec"]["template"]["metadata"]["annotations"]["tabby.dev/cni-config-hash"], hash_before,
        "MTU is in the CNI config: the hash changes"
    );
    eventually("pool natOutgoing false", WAIT, || async {
        get_json(&cp, &["ippool", "default-ipv4-ippool"]).filter(|p| p["spec"]["natOutgoing"] == false)
    })
    .await;
    eventually("Progressing", WAIT, || async {
        tabbystatus_condition(&cp, "Progressing").filter(|(s, _, _)| s == "True")
    })
    .await;
    let kubelet = fake_kubelet(cp.client());
    available(&cp).await;
    let inst = get_json(&cp, &["installation", "default"]).unwrap();
    assert_eq!(inst["status"]["mtu"], 1400);

    kubelet.abort();
    operator.stop();
    cp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_corrected_and_foreign_fields_survive() {
    let Some(cp) = cluster("operator_drift", 1).await else { return };
    let operator = Operator::start(cp.client());
    let kubelet = fake_kubelet(cp.client());
    cp.kubectl_ok(&["create", "-f", repo_root().join("custom-resources.yaml").to_str().unwrap()]);
    available(&cp).await;

    // Another manager's annotation stays.
    cp.kubectl_ok(&["annotate", "daemonset", "-n", "tabby-system", "tabby-node", "example.com/owner=platform-team"]);
    // Edit the image: reverted.
    cp.kubectl_ok(&["set", "image", "-n", "tabby-system", "daemonset/tabby-node", "tabby-agent=evil:latest"]);
    eventually("image reverted", WAIT, || async {
        get_json(&cp, &["daemonset", "-n", "tabby-system", "tabby-node"])
            .filter(|d| d["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE)
    })
    .await;
    // Remove a ClusterRole rule: restored.
    let rules = get_json(&cp, &["clusterrole", "tabby-node"]).unwrap()["rules"].as_array().unwrap().len();
    cp.kubectl_ok(&[
        "patch",
        "clusterrole",
        "tabby-node",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/rules/0"}]"#,
    ]);
    eventually("rule restored", WAIT, || async {
        get_json(&cp, &["clusterrole", "tabby-node"]).filter(|r| r["rules"].as_array().map(Vec::len) == Some(rules))
    })
    .await;
    // Delete the DaemonSet: recreated.
    let uid = get_json(&cp, &["daemonset", "-n", "tabby-system", "tabby-node"]).unwrap()["metadata"]["uid"].clone();
    cp.kubectl_ok(&["delete", "daemonset", "-n", "tabby-system", "tabby-node", "--wait=false"]);
    let ds = eventually("DaemonSet recreated", WAIT, || async {
        get_json(&cp, &["daemonset", "-n", "tabby-system", "tabby-node"])
            .filter(|d| d["metadata"]["uid"] != uid && d["metadata"]["deletionTimestamp"].is_null())
    })
    .await;
    assert!(
        ds["metadata"]["annotations"].get("example.com/owner").is_none(),
        "a new object starts without the old one's annotations"
    );
    cp.kubectl_ok(&["annotate", "daemonset", "-n", "tabby-system", "tabby-node", "example.com/owner=platform-team"]);
    // A reconcile (triggered by an Installation edit) keeps the other manager's annotation.
    let ds = log_severity(&cp, "Debug").await;
    assert_eq!(ds["metadata"]["annotations"]["example.com/owner"], "platform-team");

    // ClusterNetworkPolicy's CRD, made by the operator: v1beta1 stored and v1alpha2 served, as the
    // network-policy-api project's; an object written in one version reads in the other.
    let crd = "crd/clusternetworkpolicies.policy.networking.k8s.io";
    let versions = |cp: &tabby_testkit::ControlPlane| -> Vec<(String, bool)> {
        get_json(cp, &[crd]).map_or(vec![], |c| {
            c["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v["name"].as_str().unwrap().to_string(), v["storage"] == true))
                .collect()
        })
    };
    let both = vec![("v1alpha2".to_string(), false), ("v1beta1".to_string(), true)];
    assert_eq!(versions(&cp), both);
    let cnp = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: deny-all}\nspec: {tier: Admin, priority: 5, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}\n";
    let out = cp.kubectl_stdin(&["create", "-f", "-"], cnp);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = get_json(&cp, &["clusternetworkpolicies.v1beta1.policy.networking.k8s.io", "deny-all"]).unwrap();
    assert_eq!(
        (read["apiVersion"].as_str(), read["spec"]["priority"].as_i64()),
        (Some("policy.networking.k8s.io/v1beta1"), Some(5))
    );
    cp.kubectl_ok(&["delete", "clusternetworkpolicy", "deny-all"]);
    // One an earlier operator made (v1alpha2 only, with its label): brought up to date when this one
    // starts, as in an upgrade. (A stored version cannot be dropped from a CRD: it is made again as it was,
    // with the operator stopped.)
    operator.stop();
    let live = get_json(&cp, &[crd]).unwrap();
    let mut old = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": live["metadata"]["name"], "labels": live["metadata"]["labels"],
                     "annotations": live["metadata"]["annotations"]},
        "spec": live["spec"]});
    old["spec"]["versions"] = json!([live["spec"]["versions"][0]]);
    old["spec"]["versions"][0]["storage"] = json!(true);
    cp.kubectl_ok(&["delete", crd, "--wait=true"]);
    let out = cp.kubectl_stdin(&["create", "-f", "-"], &old.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(versions(&cp), vec![("v1alpha2".to_string(), true)]);
    let operator = Operator::start(cp.client());
    eventually("the operator's CRD serves v1beta1 again", WAIT, || async { (versions(&cp) == both).then_some(()) })
        .await;
    // One someone else owns (no managed-by label): left as it is.
    cp.kubectl_ok(&["label", crd, "app.kubernetes.io/managed-by-"]);
    cp.kubectl_ok(&[
        "patch",
        crd,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/versions/0/served","value":false}]"#,
    ]);
    // A reconcile after the edit (the log level changes, so one surely ran).
    log_severity(&cp, "Info").await;
    let served = get_json(&cp, &[crd]).unwrap()["spec"]["versions"][0]["served"].clone();
    assert_eq!(served, false, "a CRD the operator did not make is not changed");

    kubelet.abort();
    operator.stop();
    cp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_degrade_and_change_nothing() {
    let Some(cp) = cluster("operator_invalid", 1).await else { return };
    let operator = Operator::start(cp.client());
    let kubelet = fake_kubelet(cp.client());
    let valid = r#"{"apiVersion":"operator.tabby.dev/v1","kind":"Installation","metadata":{"name":"default"},
        "spec":{"network":{"ipPools":[{"name":"pods","cidr":"10.244.0.0/16"}]}}}"#;
    let out = cp.kubectl_stdin(&["apply", "--server-side", "--field-manager=test", "-f", "-"], valid);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    available(&cp).await;

    let snapshot = |cp: &tabby_testkit::ControlPlane| {
        let mut versions = Vec::new();
        for args in [
            &["daemonset", "-n", "tabby-system", "tabby-node"][..],
            &["configmap", "-n", "tabby-system", "tabby-config"],
            &["clusterrole", "tabby-node"],
            &["serviceaccount", "-n", "tabby-system", "tabby-node"],
            &["ippool", "pods"],
        ] {
            versions.push(get_json(cp, args).map(|v| v["metadata"]["resourceVersion"].clone()));
        }
        versions
    };
    let before = snapshot(&cp);
    let table: Vec<(&str, Value, &str)> = vec![
        (
            "overlapping pools",
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.244.0.0/16"}, {"name": "more", "cidr": "10.244.128.0/17"}]}}),
            "spec.network.ipPools[1].cidr",
        ),
        (
            "overlapping IPv6 pools",
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.244.0.0/16"}, {"name": "a", "cidr": "fd00::/48"}, {"name": "b", "cidr": "fd00::/64"}]}}),
            "spec.network.ipPools[2].cidr",
        ),
        (
            "native routing without BGP",
            json!({"network": {"bgp": "Disabled", "ipPools": [{"name": "pods", "cidr": "10.244.0.0/16", "encapsulation": "None"}]}}),
            "spec.network.ipPools[0].encapsulation",
        ),
        (
            "IPIP without BGP",
            json!({"network": {"bgp": "Disabled", "ipPools": [{"name": "pods", "cidr": "10.244.0.0/16", "encapsulation": "IPIP"}]}}),
            "spec.network.ipPools[0].encapsulation",
        ),
        (
            "IPIPCrossSubnet without BGP",
            json!({"network": {"bgp": "Disabled", "ipPools": [{"name": "pods", "cidr": "10.244.0.0/16", "encapsulation": "IPIPCrossSubnet"}]}}),
            "spec.network.ipPools[0].encapsulation",
        ),
        (
            "pool cidr changed",
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.245.0.0/16"}]}}),
            "spec.network.ipPools[0].cidr",
        ),
        (
            "pool block size changed",
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.244.0.0/16", "blockSize": 28}]}}),
            "spec.network.ipPools[0].blockSize",
        ),
        (
            "maxUnavailable 0",
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.244.0.0/16"}]}, "nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": 0}}}),
            "spec.nodeUpdateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            "maxUnavailable 0%",
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.244.0.0/16"}]}, "nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": "0%"}}}),
            "spec.nodeUpdateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            "bad env name",
            json!({"network": {"ipPools": [{"name": "pods", "cidr": "10.244.0.0/16"}]}, "agentDaemonSet": {"env": [{"name": "A=B", "value": "1"}]}}),
            "spec.agentDaemonSet.env[0].name",
        ),
    ];
    for (what, spec, field) in &table {
        let object = json!({"apiVersion": "operator.tabby.dev/v1", "kind": "Installation", "metadata": {"name": "default"}, "spec": spec});
        let out = cp.kubectl_stdin(&["apply", "--server-side", "--field-manager=test", "-f", "-"], &object.to_string());
        assert!(out.status.success(), "{what}: the API server accepts it ({})", String::from_utf8_lossy(&out.stderr));
        let (_, reason, message) = eventually(what, WAIT, || async {
            tabbystatus_condition(&cp, "Degraded").filter(|(s, _, m)| s == "True" && m.contains(field))
        })
        .await;
        assert_eq!(reason, "InvalidConfiguration", "{what}");
        assert!(message.starts_with("Invalid Installation provided"), "{what}: {message}");
        let inst = get_json(&cp, &["installation", "default"]).unwrap();
        let degraded =
            inst["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Degraded").unwrap().clone();
        assert!(degraded["message"].as_str().unwrap().contains(field), "{what}: Installation status names the field");
        assert_eq!(snapshot(&cp), before, "{what}: nothing written");
        // Back to the valid spec before the next case.
        let out = cp.kubectl_stdin(&["apply", "--server-side", "--field-manager=test", "-f", "-"], valid);
        assert!(out.status.success());
        eventually("valid again", WAIT, || async {
            tabbystatus_condition(&cp, "Degraded").filter(|(s, _, _)| s == "False")
        })
        .await;
    }
    let events = cp.kubectl_ok(&["get", "events", "-A", "--field-selector", "involvedObject.kind=Installation"]);
    assert!(events.contains("InvalidConfiguration"), "a Warning event for the invalid spec: {events}");

    kubelet.abort();
    operator.stop();
    cp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_spec_stays_byte_identical_and_idle_costs_no_writes() {
    let Some(cp) = cluster("operator_gitops", 1).await else { return };
    let operator = Operator::start(cp.client());
    let kubelet = fake_kubelet(cp.client());
    let file = repo_root().join("custom-resources.yaml");
    let file = file.to_str().unwrap();
    cp.kubectl_ok(&["apply", "--server-side", "--field-manager=argocd", "-f", file]);
    let spec_before = get_json(&cp, &["installation", "default"]).unwrap()["spec"].clone();
    available(&cp).await;
    // Let the last status writes settle, then count writes while nothing changes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = operator.writes();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(operator.writes(), writes, "a steady state writes nothing");
    let inst = get_json(&cp, &["installation", "default", "--show-managed-fields"]).unwrap();
    assert_eq!(inst["spec"], spec_before, "no defaults written into the spec");
    for entry in inst["metadata"]["managedFields"].as_array().unwrap() {
        if entry["manager"] == "tabby-operator" && entry["subresource"].is_null() {
            assert!(!entry["fieldsV1"].to_string().contains("f:spec"), "the operator owns no spec field: {entry}");
        }
    }
    // Re-applying the same file shows no difference.
    let out = cp.kubectl(&["diff", "--server-side", "--field-manager=argocd", "-f", file]);
    assert!(
        out.status.success(),
        "kubectl diff: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    kubelet.abort();
    operator.stop();
    cp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_everything_and_keeps_pools() {
    let Some(cp) = cluster("operator_uninstall", 2).await else { return };
    let operator = Operator::start(cp.client());
    let kubelet = fake_kubelet(cp.client());
    cp.kubectl_ok(&["create", "-f", repo_root().join("custom-resources.yaml").to_str().unwrap()]);
    available(&cp).await;
    let inst = get_json(&cp, &["installation", "default"]).unwrap();
    assert!(inst["metadata"]["finalizers"].as_array().unwrap().contains(&json!("operator.tabby.dev/cleanup")));

    // The operator restarts half-way through the teardown: the new one finishes it.
    operator.stop();
    cp.kubectl_ok(&["delete", "installation", "default", "--wait=false"]);
    let restarted = Operator::start(cp.client());
    eventually("Installation gone", Duration::from_secs(120), || async {
        get_json(&cp, &["installation", "default"]).is_none().then_some(())
    })
    .await;
    for args in [
        &["daemonset", "-n", "tabby-system", "tabby-node"][..],
        &["clusterrole", "tabby-node"],
        &["clusterrolebinding", "tabby-node"],
        &["tabbystatus", "network"],
    ] {
        assert!(get_json(&cp, args).is_none(), "{args:?} left behind");
    }
    let pods = cp.kubectl_ok(&["get", "pods", "-n", "tabby-system", "-o", "name"]);
    assert!(pods.trim().is_empty(), "agent pods left: {pods}");
    let ns = get_json(&cp, &["namespace", "tabby-system"]);
    assert!(ns.is_none() || !ns.as_ref().unwrap()["metadata"]["deletionTimestamp"].is_null(), "namespace deleted");
    assert!(get_json(&cp, &["ippool", "default-ipv4-ippool"]).is_some(), "pools are the user's data: kept");

    // Install again after the namespace is gone, then uninstall with the namespace already removed by hand.
    cp.kubectl_ok(&["wait", "--for=delete", "namespace/tabby-system", "--timeout=60s"]);
    cp.kubectl_ok(&["create", "-f", repo_root().join("custom-resources.yaml").to_str().unwrap()]);
    available(&cp).await;
    cp.kubectl_ok(&["delete", "namespace", "tabby-system", "--wait=false"]);
    cp.kubectl_ok(&["delete", "installation", "default", "--wait=false"]);
    eventually("Installation gone with the namespace already deleted", Duration::from_secs(120), || async {
        get_json(&cp, &["installation", "default"]).is_none().then_some(())
    })
    .await;

    kubelet.abort();
    restarted.stop();
    cp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_only_the_leader_writes_and_the_other_takes_over() {
    use std::sync::Arc;
    use tabby_operator::controller::{self, Context, Settings};
    use tabby_operator::leader::{LeaderElector, lead};
    use tabby_operator::metrics::Metrics;

    let Some(cp) = cluster("operator_leader", 1).await else { return };
    cp.kubectl_ok(&["create", "namespace", "tabby-operator"]);
    let kubelet = fake_kubelet(cp.client());
    let replica = |identity: &'static str| {
        let client = cp.client();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let ctx = Arc::new(Context::new(client.clone(), Settings { default_image: IMAGE.into() }, metrics.clone()));
        let task = tokio::spawn(async move {
            let elector = LeaderElector::new(client, "tabby-operator", "tabby-operator", identity);
            let _ = lead(&elector, controller::run(ctx)).await;
        });
        (task, metrics)
    };
    let (a, _) = replica("replica-a");
    let holder = || {
        get_json(&cp, &["lease", "-n", "tabby-operator", "tabby-operator"])
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    eventually("replica-a leads", WAIT, || async { holder().filter(|h| h == "replica-a") }).await;
    let (_b, b_metrics) = replica("replica-b");
    cp.kubectl_ok(&["create", "-f", repo_root().join("custom-resources.yaml").to_str().unwrap()]);
    available(&cp).await;
    let b_writes = |m: &Metrics| {
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("w", "w", m.writes.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines().filter(|l| l.starts_with("w_total")).count()
    };
    assert_eq!(b_writes(&b_metrics), 0, "the follower writes nothing");
    assert_eq!(holder().as_deref(), Some("replica-a"));

    // The leader dies without giving the lease up; the follower takes over once it expires.
    a.abort();
    let started = std::time::Instant::now();
    eventually("replica-b leads", Duration::from_secs(40), || async { holder().filter(|h| h == "replica-b") }).await;
    assert!(started.elapsed() < Duration::from_secs(25), "took over in {:?}", started.elapsed());
    cp.kubectl_ok(&["delete", "daemonset", "-n", "tabby-system", "tabby-node", "--wait=false"]);
    eventually("the new leader restores the DaemonSet", WAIT, || async {
        get_json(&cp, &["daemonset", "-n", "tabby-system", "tabby-node"])
            .filter(|d| d["metadata"]["deletionTimestamp"].is_null())
    })
    .await;
    assert!(b_writes(&b_metrics) > 0, "the new leader writes");
    kubelet.abort();
    cp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_with_its_own_rbac_and_applies_the_installation_from_helm_values() {
    let Some(cp) = cluster("operator_rbac_helm", 1).await else { return };
    // operator.yaml's ClusterRole must be enough for everything the operator does and grants.
    cp.kubectl_ok(&["apply", "--server-side", "-f", repo_root().join("operator.yaml").to_str().unwrap()]);
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:tabby-operator:tabby-operator".into());
    let as_operator = kube::Client::try_from(config).unwrap();
    let operator = Operator::start(as_operator.clone());
    let helm_values = tokio::spawn(tabby_operator::helmvalues::run(as_operator, "tabby-operator".into()));
    let kubelet = fake_kubelet(cp.client());

    // What the chart renders with installation.enabled=true.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tabby-installation", "namespace": "tabby-operator"},
        "data": {"installation.yaml": "apiVersion: operator.tabby.dev/v1\nkind: Installation\nmetadata:\n  name: default\nspec:\n  network:\n    mtu: 1410\n"}});
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &cm.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    available(&cp).await;
    let inst = get_json(&cp, &["installation", "default"]).unwrap();
    assert_eq!(inst["spec"]["network"]["mtu"], 1410);
    // helm upgrade with new values: the Installation follows.
    let cm = cm.to_string().replace("1410", "1420");
    assert!(cp.kubectl_stdin(&["apply", "-f", "-"], &cm).status.success());
    eventually("Installation follows the values", WAIT, || async {
        get_json(&cp, &["installation", "default"]).filter(|i| i["spec"]["network"]["mtu"] == 1420)
    })
    .await;
    eventually("DaemonSet rolled to MTU 1420", WAIT, || async {
        get_json(&cp, &["daemonset", "-n", "tabby-system", "tabby-node"])
            .filter(|d| agent_env(d, "TABBY_MTU").as_deref() == Some("1420"))
    })
    .await;
    helm_values.abort();
    kubelet.abort();
    operator.stop();
    cp.stop();
}
