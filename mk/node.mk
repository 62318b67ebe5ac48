# Node software for the lab's real nodes (docs/lab.md), built from Go modules at pinned versions and from
# the Kubernetes module the control plane already uses; nothing is downloaded but modules and Debian packages.
# kubelet and kube-proxy are in the control plane's multi-call binary (same Kubernetes version).
#
#   containerd, containerd-shim-runc-v2, ctr   github.com/containerd/containerd/v2 (CRI, CNI STATUS; runc from Debian)
#   coredns                                    github.com/coredns/coredns (the version kubeadm 1.37 deploys)
#   agnhost                                    k8s.io/kubernetes test/images/agnhost (the e2e suites' image)
#   pause                                      k8s.io/kubernetes build/pause/linux/pause.c, linked statically
#
# Each is a file target: rebuilt only when its pinned version (this file) or its module changes.
.PHONY: node-software

CONTAINERD_VERSION := v2.4.2
COREDNS_VERSION    := v1.14.6
# The pause version kubeadm and the kubelet of this Kubernetes release use (registry.k8s.io/pause:3.10.2).
PAUSE_VERSION      := 3.10.2
NODE_BIN           ?= $(CACHE)/node/bin
NODE_SOFTWARE      := $(addprefix $(NODE_BIN)/,containerd containerd-shim-runc-v2 ctr coredns agnhost pause localhost.crt)
# Static Go binaries: they run inside images that may carry no C library.
NODE_GO            := CGO_ENABLED=0 GOBIN=$(NODE_BIN) GOFLAGS=-trimpath

node-software: $(NODE_SOFTWARE) ## Build containerd 2.x, CoreDNS, agnhost and pause for the lab's nodes (cached)

$(NODE_BIN)/containerd $(NODE_BIN)/containerd-shim-runc-v2 $(NODE_BIN)/ctr &: $(ROOT)/mk/node.mk
	@mkdir -p $(NODE_BIN)
	@echo "==> building containerd $(CONTAINERD_VERSION) (containerd, containerd-shim-runc-v2, ctr); cold: ~4 min"
	@start=$$(date +%s); \
	$(NODE_GO) go install -tags "urfave_cli_no_docs no_btrfs no_devmapper no_zfs" \
	  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
	  github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
	  github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION); \
	$(NODE_GO) go install -tags "urfave_cli_no_docs no_grpc" \
	  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
	  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION); \
	echo "    containerd built in $$(( $$(date +%s) - start ))s"
	@touch $(NODE_BIN)/containerd $(NODE_BIN)/containerd-shim-runc-v2 $(NODE_BIN)/ctr

$(NODE_BIN)/coredns: $(ROOT)/mk/node.mk
	@mkdir -p $(NODE_BIN)
	@echo "==> building CoreDNS $(COREDNS_VERSION); cold: ~3 min"
	@start=$$(date +%s); \
	$(NODE_GO) go install -ldflags "-s -w" github.com/coredns/coredns@$(COREDNS_VERSION); \
	echo "    coredns built in $$(( $$(date +%s) - start ))s"
	@touch $@

# agnhost is a tool of the control plane's module (go.mod `tool` line), so its version is the control plane's.
# Beside it, the TLS certificate and key its porter serves with (the module's test/images/agnhost/porter/,
# as the upstream image carries them at /localhost.crt and /localhost.key).
$(NODE_BIN)/agnhost $(NODE_BIN)/localhost.crt &: $(CP_DIR)/go.mod $(CP_DIR)/go.sum
	@mkdir -p $(NODE_BIN)
	@echo "==> building agnhost ($(K8S_VERSION) test/images/agnhost)"
	@cd $(CP_DIR) && start=$$(date +%s) && \
	  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $@.tmp k8s.io/kubernetes/test/images/agnhost && \
	  dir=$$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/porter && \
	  cp $$dir/localhost.crt $$dir/localhost.key $(NODE_BIN)/ && chmod 0644 $(NODE_BIN)/localhost.crt $(NODE_BIN)/localhost.key && \
	  mv $@.tmp $@ && echo "    agnhost built in $$(( $$(date +%s) - start ))s"

$(NODE_BIN)/pause: $(CP_DIR)/go.mod
	@mkdir -p $(NODE_BIN)
	@echo "==> building pause $(PAUSE_VERSION) from the Kubernetes module's build/pause/linux/pause.c"
	@dir=$$(cd $(CP_DIR) && go mod download -json k8s.io/kubernetes | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p') && \
	  gcc -Os -Wall -Werror -static -DVERSION=v$(PAUSE_VERSION)-tabby-lab -o $@.tmp "$$dir/build/pause/linux/pause.c" && \
	  strip $@.tmp && mv $@.tmp $@
