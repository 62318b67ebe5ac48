# The lab: a real Kubernetes cluster on this machine (per node: containerd, kubelet and kube-proxy in network
# and mount namespaces; the control plane on node-0), Tabby installed from its image. Needs root. docs/lab.md.
NODES ?= 3
LAB_STATE := $(ROOT)/.cache/lab
LAB := $(ROOT)/target/release/tabby-lab
IMAGES_DIR ?= $(ROOT)/target/images
NODE_BIN ?= $(CACHE)/node/bin

.PHONY: lab lab-down lab-exec lab-node e2e lab-binaries e2e-images bench-podstart

# Tabby's binaries laid out as in the image: side by side, the CNI plugin linked statically (plugin-static,
# in mk/cni.mk). The image builder (make images) takes them from here; `kubectl tabby` on this machine too.
LAB_BIN := $(ROOT)/target/lab-bin
E2E_BIN := $(ROOT)/target/e2e-bin
E2E_IMAGES := $(ROOT)/target/e2e-images
BINARIES := tabby-agent tabby-operator kubectl-tabby

lab-binaries: plugin-static
	@echo "==> building Tabby (release)"
	$(CARGO) build --release --workspace --bins --exclude xtask
	@mkdir -p $(LAB_BIN) && cp -f $(addprefix $(ROOT)/target/release/,$(BINARIES)) $(PLUGIN_STATIC) $(LAB_BIN)/

lab: controlplane node-software images ## Start a NODES-node (default 3) cluster here and install Tabby as README says (root)
	@$(LAB) up --nodes $(NODES) --state $(LAB_STATE) --bin $(LAB_BIN) --images $(IMAGES_DIR) --node-bin $(NODE_BIN)

lab-down: ## Stop the lab and remove everything it created
	@$(LAB) down --state $(LAB_STATE)

# The command travels in the environment (make exports command-line variables), so any quoting in CMD is kept.
lab-exec: ## kubectl exec into POD=namespace/name and run CMD='…' there with sh -c
	@$(LAB) exec --state $(LAB_STATE) "$(POD)" "$$CMD"

lab-node: ## A shell on lab node NODE=node-N (its namespaces); with CMD='…', run it there with sh -c
	@if [ -n "$${CMD:-}" ]; then $(LAB) node --state $(LAB_STATE) "$(NODE)" "$$CMD"; else $(LAB) node --state $(LAB_STATE) "$(NODE)"; fi

# The e2e runs the debug build `make test` already made (CI compiles nothing twice), stripped as a release
# image would be, in its own image set.
e2e-images: controlplane node-software plugin-static
	$(CARGO) build --workspace --bins --exclude xtask
	@mkdir -p $(E2E_BIN) && cp -f $(addprefix $(ROOT)/target/debug/,$(BINARIES)) $(PLUGIN_STATIC) $(E2E_BIN)/
	@strip $(addprefix $(E2E_BIN)/,$(BINARIES))
	$(CARGO) xtask images --tabby-bin $(E2E_BIN) --node-bin $(NODE_BIN) --out $(E2E_IMAGES)

e2e: e2e-images ## The getting-started guide, verbatim, on a fresh lab with real nodes (root)
	TABBY_BIN_DIR=$(E2E_BIN) TABBY_IMAGES=$(E2E_IMAGES) TABBY_NODE_BIN=$(NODE_BIN) \
	  $(CARGO) test -p tabby-e2e --test getting_started -- --nocapture

bench-podstart: controlplane node-software images ## Pod creation → Ready p50/p99, 30 pods on 3 real nodes: Tabby vs ptp + host-local (root)
	TABBY_BIN_DIR=$(LAB_BIN) TABBY_IMAGES=$(IMAGES_DIR) TABBY_NODE_BIN=$(NODE_BIN) $(CARGO) bench -p tabby-e2e --bench podstart
