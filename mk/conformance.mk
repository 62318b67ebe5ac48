# The Kubernetes project's own judges of a network plugin (docs/conformance.md): upstream's e2e.test, built from
# the control plane's module at its Kubernetes version, run against a fresh lab of real nodes.
.PHONY: e2e-test

E2E_TEST := $(CACHE)/e2e/bin/e2e.test

e2e-test: $(E2E_TEST) ## Build upstream's e2e.test (go test -c k8s.io/kubernetes/test/e2e) at the control plane's version (cached)

$(E2E_TEST): $(CP_DIR)/go.mod $(CP_DIR)/go.sum
	@mkdir -p $(dir $@)
	@echo "==> building e2e.test ($(K8S_VERSION) k8s.io/kubernetes/test/e2e); cold: ~10 min on 2 cores"
	@cd $(CP_DIR) && start=$$(date +%s) && \
	  go test -c -trimpath -o $@.tmp \
	    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
	      -X k8s.io/component-base/version.gitTreeState=clean" k8s.io/kubernetes/test/e2e && \
	  mv $@.tmp $@ && echo "    e2e.test built in $$(( $$(date +%s) - start ))s"

# The runner (e2e/src/lab/suites.rs): a fresh 3-node lab, the plugin, e2e.test focused on a suite, the JUnit
# report and a summary table under target/conformance/<suite>-<plugin>/, non-zero exit on any failure.
CONFORMANCE := $(ROOT)/target/release/tabby-conformance
CONFORMANCE_ARGS = --images $(IMAGES_DIR) --node-bin $(NODE_BIN) --bin $(LAB_BIN) --e2e-test $(E2E_TEST)
.PHONY: conformance conformance-reference conformance-dual-stack conformance-netpol conformance-ci

conformance: controlplane node-software images e2e-test ## [sig-network] … [Conformance] + Networking Granular Checks against Tabby on a fresh lab (root)
	$(CONFORMANCE) --suite conformance --plugin tabby $(CONFORMANCE_ARGS)

conformance-reference: controlplane node-software images e2e-test ## The same suite with Debian's bridge + host-local instead of Tabby: the lab's control (root)
	$(CONFORMANCE) --suite conformance --plugin reference $(CONFORMANCE_ARGS)

conformance-dual-stack: controlplane node-software images e2e-test ## The Networking Granular Checks on a dual-stack lab with an IPv4+IPv6 Installation (root)
	$(CONFORMANCE) --suite granular --plugin tabby --dual-stack $(CONFORMANCE_ARGS)

conformance-netpol: controlplane node-software images e2e-test netpol-api-test ## The NetworkPolicy e2e suite and the network-policy-api conformance suite against Tabby (root)
	$(CONFORMANCE) --suite netpol --plugin tabby $(CONFORMANCE_ARGS)

# CI's subset, on the debug build and image set `make e2e` already made.
conformance-ci: e2e-images e2e-test ## CI's subset: pod Granular Checks (HTTP, UDP), one Service and one DNS spec (root)
	$(ROOT)/target/debug/tabby-conformance --suite ci --plugin tabby --images $(E2E_IMAGES) --node-bin $(NODE_BIN) \
	  --bin $(E2E_BIN) --e2e-test $(E2E_TEST)

# The network-policy-api project's conformance suite (ClusterNetworkPolicy), a Go test of module
# sigs.k8s.io/network-policy-api at its latest release, built in its own module (e2e/netpolapi), with the
# module's CRD beside it for the runner to install. Beside it, the same tests over the suite's manifests with
# the base pods' SCTP servers taken out (e2e/netpolapi/withoutsctp: generated, then built), which the runner
# uses on a kernel without SCTP.
NETPOL_API_DIR := $(CACHE)/e2e/netpol-api
NETPOL_API_TEST := $(NETPOL_API_DIR)/netpol-api.test
NETPOL_API_NOSCTP := $(NETPOL_API_DIR)/netpol-api-without-sctp.test
.PHONY: netpol-api-test
netpol-api-test: $(NETPOL_API_TEST) $(NETPOL_API_NOSCTP) ## Build the network-policy-api conformance suite (cached)

$(NETPOL_API_TEST): $(ROOT)/e2e/netpolapi/go.mod $(ROOT)/e2e/netpolapi/go.sum
	@mkdir -p $(NETPOL_API_DIR)
	@echo "==> building the network-policy-api conformance suite"
	@cd $(ROOT)/e2e/netpolapi && \
	  go test -c -trimpath -o $@.tmp sigs.k8s.io/network-policy-api/conformance && \
	  dir=$$(go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api) && \
	  cp $$dir/config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml $(NETPOL_API_DIR)/crd.yaml && \
	  mv $@.tmp $@

$(NETPOL_API_NOSCTP): $(ROOT)/e2e/netpolapi/go.mod $(ROOT)/e2e/netpolapi/go.sum $(wildcard $(ROOT)/e2e/netpolapi/withoutsctp/*.go $(ROOT)/e2e/netpolapi/withoutsctp/gen/*.go)
	@mkdir -p $(NETPOL_API_DIR)
	@echo "==> building the network-policy-api conformance suite without SCTP servers"
	@cd $(ROOT)/e2e/netpolapi && rm -rf withoutsctp/base && \
	  go run ./withoutsctp/gen withoutsctp && \
	  go test -c -trimpath -o $@.tmp ./withoutsctp && \
	  mv $@.tmp $@
