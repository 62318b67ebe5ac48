# Network policy benchmark (issue 16): Tabby's policy against kube-router's network-policy controller, side by
# side on the lab's real nodes (docs/benchmarks.md, docs/policy.md).
#
#   kube-router   github.com/cloudnativelabs/kube-router/v2 (only its firewall runs: --run-firewall=true
#                 --run-router=false --run-service-proxy=false), v2.1.0: the newest release the Go module
#                 proxy this project builds from serves. It runs on each lab node as a node process, over
#                 Debian's iptables and ipset (deps/apt-packages.txt).
.PHONY: kube-router bench-policy bench-policy-scale

KUBE_ROUTER_VERSION := v2.1.0
KUBE_ROUTER_BIN     := $(CACHE)/kube-router/bin
KUBE_ROUTER         := $(KUBE_ROUTER_BIN)/kube-router

kube-router: $(KUBE_ROUTER) ## Build kube-router (its network-policy controller is bench-policy's peer; cached)

$(KUBE_ROUTER): $(ROOT)/mk/policy.mk
	@mkdir -p $(KUBE_ROUTER_BIN)
	@echo "==> building kube-router $(KUBE_ROUTER_VERSION); cold: ~4 min"
	@start=$$(date +%s); \
	CGO_ENABLED=0 GOBIN=$(KUBE_ROUTER_BIN) GOFLAGS=-trimpath go install \
	  -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$(KUBE_ROUTER_VERSION)" \
	  github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$(KUBE_ROUTER_VERSION); \
	echo "    kube-router built in $$(( $$(date +%s) - start ))s"
	@touch $@

# The counts are BENCH_POLICY_* variables (e2e/benches/policy.rs; make passes them on in the environment):
# POLICIES (1000), PODS (10000), FAKE_NODES (100), ROUNDS (10), LABEL_ROUNDS (10), NEW_PODS (10),
# IPERF_SECONDS (5), IPERF_RUNS (2); ONLY=tabby or ONLY=kube-router runs one side.

bench-policy: controlplane node-software images kube-router ## Policy → enforced, pod Ready+enforced, label change, iperf3, RSS at 1k policies/10k pods: Tabby vs kube-router (root)
	TABBY_BIN_DIR=$(LAB_BIN) TABBY_IMAGES=$(IMAGES_DIR) TABBY_NODE_BIN=$(NODE_BIN) TABBY_KUBE_ROUTER=$(KUBE_ROUTER) \
	  $(CARGO) bench -p tabby-e2e --bench policy

bench-policy-scale: ## One relabel and one policy edit at 1k policies/10k pods inside one agent: patch vs full compile, nft apply, memory per part (root)
	$(CARGO) bench -p tabby-agent --bench policy_scale
