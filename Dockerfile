# syntax=docker/dockerfile:1
# Container images of the workspace's two binaries (crates/ws-metrics-adapter, crates/ws-demo):
#
#   docker build -t ws-metrics-adapter:0.1.0 .                 # the adapter (default, last stage)
#   docker build --target ws-demo -t ws-demo:0.1.0 .           # the demo WebSocket workload
#
# manifests/deployment.yaml runs the first, manifests/examples/ws-demo-deployment.yaml the second.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# The whole context minus .dockerignore: Cargo refuses to build when a workspace member or a
# target a manifest declares ([[bench]] under benches/, tests/) is missing, even one not built.
COPY . .
# Cache mounts keep the crates.io download and the incremental target dir between builds;
# the binaries are copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release -p ws-metrics-adapter -p ws-demo \
    && install -D -m 0755 target/release/ws-metrics-adapter /out/ws-metrics-adapter \
    && install -D -m 0755 target/release/ws-demo /out/ws-demo

# glibc + libgcc and a nonroot user; no shell, no package manager. Both images start from this
# stage and inherit its labels and user. No version label: it would be a second copy of
# Cargo.toml's version; a release build adds it with --label.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.licenses="Apache-2.0"
# Same UID/GID as runAsUser/runAsGroup in manifests/deployment.yaml.
USER 65532:65532

FROM runtime AS ws-demo
LABEL org.opencontainers.image.title="ws-demo" \
      org.opencontainers.image.description="Demo WebSocket workload exporting websocket_connections_active"
COPY --from=builder /out/ws-demo /ws-demo
# WebSocket routes, /metrics and /healthz on one port.
EXPOSE 9000
ENTRYPOINT ["/ws-demo"]
CMD ["serve", "--listen", "0.0.0.0:9000"]

FROM runtime AS ws-metrics-adapter
LABEL org.opencontainers.image.title="ws-metrics-adapter" \
      org.opencontainers.image.description="Kubernetes custom.metrics.k8s.io adapter serving live WebSocket connection counts"
COPY --from=builder /out/ws-metrics-adapter /ws-metrics-adapter
# 6443: HTTPS custom metrics API; 8080: /livez, /readyz, /metrics (plain HTTP).
EXPOSE 6443 8080
ENTRYPOINT ["/ws-metrics-adapter"]
CMD ["serve"]
