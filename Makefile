# Tabby: build, test, lint and generate. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
CACHE       := $(ROOT)/.cache
TOOLS       := $(CACHE)/tools/bin
CP_DIR      := $(ROOT)/e2e/controlplane
CP_BIN      := $(CACHE)/controlplane/bin
CONTROLPLANE := $(CP_BIN)/controlplane
HELM        := $(TOOLS)/helm
HELM_VERSION := v4.3.1
# The Kubernetes release the control plane is built from (its go.mod pins the same one).
K8S_VERSION := v1.37.2
IMAGE       ?= ghcr.io/tabby-dev/tabby:dev
CARGO       ?= cargo
export PATH := $(TOOLS):$(CP_BIN):$(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)
# Where the Rust tests find the control plane and helm.
export TABBY_CONTROLPLANE := $(CONTROLPLANE)
export TABBY_HELM := $(HELM)

.PHONY: help deps build test lint fmt manifests manifests-check image controlplane helm clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## Install every system package and tool the build, the tests and the lab need (Debian, as root)
	@echo "==> apt packages"
	@if [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$(grep -hv '^\s*#' deps/apt-packages.txt | xargs) >/dev/null; \
	else echo "not root: skipping apt-get (install deps/apt-packages.txt yourself)"; fi
	@echo "==> Rust toolchain components"
	@command -v rustup >/dev/null && rustup component add rustfmt clippy >/dev/null 2>&1 || true
	@command -v go >/dev/null || { echo "Go is required (https://go.dev/dl) to build the test control plane"; exit 1; }
	@$(MAKE) --no-print-directory controlplane helm node-software e2e-test

build: ## Build every binary (release)
	$(CARGO) build --release --workspace --bins --exclude xtask

test: controlplane helm ## Run every test (unit, control plane, network namespaces as root), then make e2e and CI's conformance subset
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory conformance-ci

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

manifests: ## Regenerate crds/, operator.yaml, custom-resources.yaml and the Helm chart from the Rust types
	$(CARGO) xtask manifests

manifests-check: ## Fail when the committed generated files differ from the Rust types
	$(CARGO) xtask manifests --check

image: ## Build the container image (needs a Docker or Podman engine)
	@engine=$$(command -v docker || command -v podman || true); \
	if [ -z "$$engine" ]; then echo "no docker or podman here"; exit 1; fi; \
	$$engine build -t $(IMAGE) .

controlplane: $(CONTROLPLANE) ## Build etcd, kube-apiserver, controller-manager, scheduler, kubectl, kubelet, kube-proxy from upstream modules (cached)

# Rebuilt only when the module or main.go change. Prints progress: packages compiled / packages needed.
$(CONTROLPLANE): $(CP_DIR)/go.mod $(CP_DIR)/go.sum $(CP_DIR)/main.go
	@mkdir -p $(CP_BIN)
	@echo "==> building the test control plane ($(K8S_VERSION)); cold: ~8-15 min on 2 cores"
	@cd $(CP_DIR) && total=$$(go list -deps . | wc -l) && start=$$(date +%s) && n=0 && \
	  go build -v -trimpath -o $@.tmp \
	    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
	      -X k8s.io/component-base/version.gitTreeState=clean" . 2>&1 | \
	  while IFS= read -r line; do \
	    n=$$((n + 1)); \
	    case "$$line" in \#*|*rror*) echo "$$line";; esac; \
	    if [ $$((n % 150)) = 0 ]; then echo "    $$n/$$total packages ($$(( $$(date +%s) - start ))s)"; fi; \
	  done
	@mv $@.tmp $@
	@for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do ln -sf controlplane $(CP_BIN)/$$c; done
	@echo "==> control plane ready: $(CP_BIN)"

helm: $(HELM) ## Build helm from its Go module (cached)

$(HELM):
	@echo "==> building helm $(HELM_VERSION)"
	@GOBIN=$(TOOLS) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

clean: ## Remove build output (keeps the control plane cache)
	$(CARGO) clean

# Component makefiles (benchmarks, interop tests).
-include mk/*.mk
