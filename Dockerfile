# One image with every Tabby binary: tabby-operator, tabby-agent, tabby (the CNI plugin), kubectl-tabby.
# Build: make image (or: docker build -t ghcr.io/tabby-dev/tabby:dev .)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The CNI plugin is copied onto the host and runs there, whatever its C library: it is linked statically.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins --exclude xtask \
 && cargo rustc --release --locked -p tabby-cni --bin tabby -- -C target-feature=+crt-static \
 && mkdir -p /out \
 && for b in tabby-operator tabby-agent tabby kubectl-tabby; do \
      if [ -x "target/release/$b" ]; then cp "target/release/$b" /out/; fi; \
    done

FROM debian:bookworm-slim
ARG VERSION=dev
LABEL org.opencontainers.image.title="tabby" \
      org.opencontainers.image.description="Tabby: a Kubernetes pod network (block IPAM, BGP, VXLAN) with its operator" \
      org.opencontainers.image.source="https://github.com/tabby-dev/tabby" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The operator runs as this user; the node agent's DaemonSet runs privileged as root by design.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tabby-operator"]
