# cyclonus: the generated NetworkPolicy cases of github.com/mattfenwick/cyclonus against Tabby on a fresh lab
# (docs/conformance.md, section Cyclonus). The binary is built from cyclonus' Go module at the version
# e2e/cyclonus/go.mod pins, in a module of its own (its Kubernetes client versions stay its own), and cached.
CYCLONUS_DIR := $(CACHE)/e2e/cyclonus
CYCLONUS_BIN := $(CYCLONUS_DIR)/cyclonus
# A subset: cyclonus tags, comma-separated (`cyclonus generate --help` lists them). INCLUDE empty: every case.
CYCLONUS_INCLUDE ?=
CYCLONUS_EXCLUDE ?=
# Seconds one probe waits before it counts as blocked (Tabby drops, so every blocked probe waits this long;
# upstream's NetworkPolicy e2e probes with agnhost connect --timeout=1s too).
CYCLONUS_JOB_TIMEOUT ?= 1
.PHONY: cyclonus cyclonus-bin

cyclonus-bin: $(CYCLONUS_BIN) ## Build cyclonus from its Go module at the pinned version (cached)

$(CYCLONUS_BIN): $(ROOT)/e2e/cyclonus/go.mod $(ROOT)/e2e/cyclonus/go.sum
	@mkdir -p $(CYCLONUS_DIR)
	@echo "==> building cyclonus ($$(cd $(ROOT)/e2e/cyclonus && go list -m -f '{{.Version}}' github.com/mattfenwick/cyclonus))"
	@cd $(ROOT)/e2e/cyclonus && start=$$(date +%s) && \
	  go build -trimpath -ldflags "-s -w" -o $@.tmp github.com/mattfenwick/cyclonus/cmd/cyclonus && \
	  mv $@.tmp $@ && echo "    cyclonus built in $$(( $$(date +%s) - start ))s"

cyclonus: controlplane node-software images cyclonus-bin ## cyclonus' generated NetworkPolicy cases against Tabby on a fresh lab; CYCLONUS_INCLUDE=tags for a subset (root)
	$(CONFORMANCE) --suite cyclonus --plugin tabby $(CONFORMANCE_ARGS) --cyclonus $(CYCLONUS_BIN) \
	  --include '$(CYCLONUS_INCLUDE)' --exclude '$(CYCLONUS_EXCLUDE)' --job-timeout $(CYCLONUS_JOB_TIMEOUT)
