# The lab: the whole stack on a local multi-node cluster (network namespaces, a real control plane, a node
# runner standing in for the kubelet). Needs root. See docs/lab.md.
NODES ?= 3
LAB_STATE := $(ROOT)/.cache/lab
LAB := $(ROOT)/target/release/tabby-lab

.PHONY: lab lab-down lab-exec lab-node e2e lab-binaries

# The lab and the e2e run Tabby's binaries laid out as in the image: side by side, the CNI plugin linked
# statically (plugin-static, in mk/cni.mk). The agent's init container installs the plugin found beside it.
LAB_BIN := $(ROOT)/target/lab-bin
E2E_BIN := $(ROOT)/target/e2e-bin
BINARIES := tabby-agent tabby-operator kubectl-tabby

lab-binaries: plugin-static
	@echo "==> building Tabby (release)"
	$(CARGO) build --release --workspace --bins --exclude xtask
	@mkdir -p $(LAB_BIN) && cp -f $(addprefix $(ROOT)/target/release/,$(BINARIES)) $(PLUGIN_STATIC) $(LAB_BIN)/

lab: controlplane lab-binaries ## Start the stack on NODES (default 3) local nodes and install Tabby as README says
	@$(LAB) up --nodes $(NODES) --state $(LAB_STATE) --bin $(LAB_BIN)

lab-down: ## Stop the lab and remove everything it created
	@$(LAB) down --state $(LAB_STATE)

lab-exec: ## Run CMD in pod POD=namespace/name's network namespace
	@$(LAB) exec-pod --state $(LAB_STATE) $(POD) $(CMD)

lab-node: ## Run CMD on lab node NODE=node-N
	@$(LAB) exec-node --state $(LAB_STATE) $(NODE) $(CMD)

# Debug binaries: the same build `make test` already made, so CI compiles nothing twice.
e2e: controlplane plugin-static ## The getting-started guide as a test, on a fresh lab (root)
	$(CARGO) build --workspace --bins --exclude xtask
	@mkdir -p $(E2E_BIN) && cp -f $(addprefix $(ROOT)/target/debug/,$(BINARIES)) $(PLUGIN_STATIC) $(E2E_BIN)/
	TABBY_BIN_DIR=$(E2E_BIN) $(CARGO) test -p tabby-e2e --test getting_started -- --nocapture
