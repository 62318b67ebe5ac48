# The BGP speaker library (issue 6).
.PHONY: bench-bgp test-bgp test-bgp-interop fuzz-bgp

BGP_BENCH_COUNTS ?= 100000 1000000
BGP_FUZZ_SECONDS ?= 60

bench-bgp: ## BGP UPDATE rate and peak RSS: Tabby vs BIRD 2 vs GoBGP, 100k and 1M prefixes (root)
	$(CARGO) build --release -p tabby-bgp --examples
	$(CARGO) run --release -p tabby-bgp --example bench -- $(BGP_BENCH_COUNTS)

test-bgp: ## All tabby-bgp tests (interop ones need root, bird2, frr, gobgpd)
	$(CARGO) test -p tabby-bgp

test-bgp-interop: ## Interop with BIRD 2, FRR and GoBGP in network namespaces (root)
	$(CARGO) test -p tabby-bgp --test interop

fuzz-bgp: ## Fuzz the BGP decoder for BGP_FUZZ_SECONDS (nightly + cargo-fuzz, installed if missing)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@corpus=$$(mktemp -d) && cp bgp/fuzz/corpus/decode/* $$corpus/ && \
	  cd bgp/fuzz && cargo +nightly fuzz run decode $$corpus -- -max_total_time=$(BGP_FUZZ_SECONDS); \
	  rc=$$?; rm -rf $$corpus; exit $$rc
