# The CNI plugin and the agent's IPAM (issue 5).
.PHONY: bench-cni test-cni

bench-cni: controlplane ## CNI ADD/DEL p50/p99 and 100 parallel ADDs: tabby vs ptp+host-local (root)
	$(CARGO) bench -p tabby-cni --bench cni

test-cni: controlplane ## The CNI plugin and IPAM tests (root: network namespaces)
	$(CARGO) test -p tabby-agent -p tabby-cni
