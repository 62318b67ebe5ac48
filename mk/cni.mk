# The CNI plugin and the agent's IPAM (issue 5).
.PHONY: bench-cni test-cni plugin-static

# The plugin as the image ships it: linked statically, because it runs on the host against the host's C
# library. Built in its own target directory so it never replaces cargo's dynamically linked test build.
PLUGIN_STATIC_DIR := $(ROOT)/target/static
PLUGIN_STATIC := $(PLUGIN_STATIC_DIR)/release/tabby

plugin-static: ## The CNI plugin linked statically (as in the image), in target/static/release/tabby
	CARGO_TARGET_DIR=$(PLUGIN_STATIC_DIR) $(CARGO) rustc --release -p tabby-cni --bin tabby -- -C target-feature=+crt-static

bench-cni: controlplane plugin-static ## CNI ADD/DEL p50/p99 and 100 parallel ADDs: tabby (static, as shipped) vs ptp+host-local (root)
	TABBY_CNI_PLUGIN=$(PLUGIN_STATIC) $(CARGO) bench -p tabby-cni --bench cni

test-cni: controlplane ## The CNI plugin and IPAM tests (root: network namespaces)
	$(CARGO) test -p tabby-agent -p tabby-cni
