# The node agent's network (issue 7): routes, BGP mesh, VXLAN, NAT outgoing, status, cleanup.
.PHONY: bench-routing test-routing

BENCH_ROUTING_COUNTS ?= 10000 100000

bench-routing: controlplane ## FIB install time and RSS vs BIRD 2, pod-to-pod iperf3 ratios, agent RSS at 100 nodes/10k pods (root)
	BENCH_ROUTING_COUNTS="$(BENCH_ROUTING_COUNTS)" $(CARGO) bench -p tabby-agent --bench routing

test-routing: controlplane ## The agent's lab tests: BGP mesh, VXLAN, IPIP, NAT, BIRD/route reflector, restarts, metrics, cleanup (root)
	$(CARGO) test -p tabby-agent --test routing_bgp_mesh --test vxlan_modes --test ipip_modes --test nat_outgoing \
	  --test bgp_resilience --test bgp_external --test agent_metrics --test ipam_two_nodes --test cleanup_node
