//! `kubectl tabby get` for the policy kinds and `kubectl tabby policy trace` against a real
//! kube-apiserver: the trace names the tier, policy and rule the agent's model decides by.

mod support;

use serde_json::json;
use support::*;
use tabby_testkit::{Options, repo_root, start_or_skip};

#[tokio::test]
async fn policy_tables_and_trace() {
    let Some(cp) = start_or_skip("policy_tables_and_trace", Options::default()).await else { return };
    install_crds(&cp);
    cp.kubectl_ok(&["create", "-f", repo_root().join("crds/optional").to_str().unwrap()]);
    cp.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
    let mut objects = namespace("shop");
    objects.extend([
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "pause", "ports": [{"name": "http", "containerPort": 8080}]}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cli", "namespace": "shop", "labels": {"app": "cli"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "pause"}]}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "Tier", "metadata": {"name": "security"}, "spec": {"order": 100}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "no-ssh"},
               "spec": {"tier": "security", "order": 10, "selector": "all()",
                        "ingress": [{"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}}, {"action": "Pass"}]}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"selector": "app == 'web'", "ingress": [{"action": "Allow", "protocol": "TCP",
                        "source": {"selector": "app == 'cli'"}, "destination": {"ports": ["http"]}}]}}),
        json!({"apiVersion": "tabby.dev/v1", "kind": "GlobalNetworkSet", "metadata": {"name": "internet", "labels": {"role": "internet"}},
               "spec": {"nets": ["0.0.0.0/0", "::/0"]}}),
    ]);
    apply(&cp, &objects);
    patch_status(&cp, "pod", Some("shop"), "web", json!({"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]}));
    patch_status(&cp, "pod", Some("shop"), "cli", json!({"podIP": "10.0.0.2", "podIPs": [{"ip": "10.0.0.2"}]}));

    let gnp = tabby_ok(&cp, &["get", "gnp", "-o", "wide"]);
    assert!(
        gnp.starts_with(
            "NAME     TIER       ORDER   SELECTOR   VALID    NAMESPACESELECTOR   TYPES     INGRESS   EGRESS\n"
        ),
        "{gnp}"
    );
    assert!(
        gnp.contains("no-ssh   security   10      all()      <none>   <none>              Ingress   2         0"),
        "{gnp}"
    );
    let tiers = tabby_ok(&cp, &["get", "tiers"]);
    assert_eq!(tiers, "NAME       ORDER   DEFAULTACTION\nsecurity   100     Deny\n");
    assert_eq!(tabby_ok(&cp, &["get", "gns"]), "NAME       NETS\ninternet   2\n");
    let np = tabby_ok(&cp, &["get", "networkpolicy", "-A"]);
    assert!(np.contains("shop        web    default   <none>   app == 'web'"), "{np}");
    assert!(tabby_ok(&cp, &["get", "tnp", "-n", "shop", "web", "-o", "yaml"]).contains("kind: NetworkPolicy"));

    let t = tabby_ok(&cp, &["policy", "trace", "--from", "shop/cli", "--to", "shop/web", "--port", "8080/TCP"]);
    assert!(t.contains("ingress  of shop/web: ALLOW, tier default, np:shop/web, rule 0: allow"), "{t}");
    assert!(t.contains("tier security: gnp:no-ssh"), "{t}");
    assert!(t.ends_with("verdict: ALLOW (nothing denies it)\n"), "{t}");
    let t = tabby_ok(&cp, &["policy", "trace", "--from", "shop/cli", "--to", "shop/web", "--port", "22"]);
    assert!(t.contains("verdict: DENY (ingress of shop/web: tier security, gnp:no-ssh, rule 0: deny)"), "{t}");
    let t = tabby_ok(&cp, &["-n", "shop", "policy", "trace", "--from", "cli", "--to", "web", "--port", "8081/TCP"]);
    assert!(t.contains("verdict: DENY (ingress of shop/web: tier default: no rule matched"), "{t}");
    let run = tabby(&cp.kubeconfig, &["policy", "trace", "--from", "shop/nope", "--to", "shop/web", "--port", "80"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("pod shop/nope is not an endpoint"), "{run:?}");
}
