//! The cluster add-ons a kubeadm cluster comes with, installed by the lab the same way: CoreDNS as a
//! Deployment in `kube-system` behind the `kube-dns` Service at the cluster DNS address. Its pods use the pod
//! network, so they start once Tabby has made the nodes Ready.
//!
//! The Corefile is kubeadm's without `forward` and `loop`: the lab has no uplink and no upstream resolver, so
//! names outside the cluster get an immediate answer (SERVFAIL) instead of a timeout per query.

use super::{CLUSTER_DNS, CLUSTER_DOMAIN};

/// The CoreDNS manifest (ServiceAccount, RBAC, Corefile, Deployment, Service), for `kubectl apply -f -`.
pub fn coredns(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects:
- {{kind: ServiceAccount, name: coredns, namespace: kube-system}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        health {{
           lameduck 5s
        }}
        ready
        kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }}
        prometheus :9153
        cache 30 {{
           disable success {CLUSTER_DOMAIN}
           disable denial {CLUSTER_DOMAIN}
        }}
        reload
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: 2
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxUnavailable: 1}}
  selector:
    matchLabels: {{k8s-app: kube-dns}}
  template:
    metadata:
      labels: {{k8s-app: kube-dns}}
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      tolerations:
      - {{key: CriticalAddonsOnly, operator: Exists}}
      - {{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}}
      nodeSelector: {{kubernetes.io/os: linux}}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector:
                matchExpressions:
                - {{key: k8s-app, operator: In, values: [kube-dns]}}
              topologyKey: kubernetes.io/hostname
      containers:
      - name: coredns
        image: {image}
        imagePullPolicy: IfNotPresent
        resources:
          limits: {{memory: 170Mi}}
          requests: {{cpu: 100m, memory: 70Mi}}
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts:
        - {{name: config-volume, mountPath: /etc/coredns, readOnly: true}}
        ports:
        - {{containerPort: 53, name: dns, protocol: UDP}}
        - {{containerPort: 53, name: dns-tcp, protocol: TCP}}
        - {{containerPort: 9153, name: metrics, protocol: TCP}}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities:
            add: [NET_BIND_SERVICE]
            drop: [ALL]
          readOnlyRootFilesystem: true
        livenessProbe:
          httpGet: {{path: /health, port: 8080, scheme: HTTP}}
          initialDelaySeconds: 60
          timeoutSeconds: 5
          successThreshold: 1
          failureThreshold: 5
        readinessProbe:
          httpGet: {{path: /ready, port: 8181, scheme: HTTP}}
      dnsPolicy: Default
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items:
          - {{key: Corefile, path: Corefile}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/cluster-service: "true", kubernetes.io/name: CoreDNS}}
  annotations: {{prometheus.io/port: "9153", prometheus.io/scrape: "true"}}
spec:
  selector: {{k8s-app: kube-dns}}
  clusterIP: {CLUSTER_DNS}
  # Both families where the cluster has both (the dual-stack lab), IPv4 alone otherwise.
  ipFamilyPolicy: PreferDualStack
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
  - {{name: metrics, port: 9153, protocol: TCP}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_parses_and_the_service_has_the_cluster_dns_address() {
        let text = coredns("registry.k8s.io/coredns/coredns:v1.14.6");
        let docs: Vec<serde_yaml::Value> =
            text.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e}\n{d}"))).collect();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"]
        );
        assert_eq!(docs[5]["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(
            docs[4]["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.k8s.io/coredns/coredns:v1.14.6"
        );
        assert!(docs[3]["data"]["Corefile"].as_str().is_some_and(|c| c.contains("kubernetes cluster.local")));
    }
}
