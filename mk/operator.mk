# The operator's benchmark: edit latency, idle writes, peak RSS (see operator/benches/operator.rs).
.PHONY: bench-operator
bench-operator: controlplane ## Operator: edit→DaemonSet p50/p99, idle API writes, peak RSS with 1,000 nodes
	$(CARGO) bench -p tabby-operator --bench operator
