# syntax=docker/dockerfile:1
# Container images of the workspace's two binaries (crates/ws-metrics-adapter, crates/ws-demo):
#
#   docker build -t ws-metrics-adapter:0.1.0 .                 # the adapter (default, last stage)
#   docker build --target ws-demo -t ws-demo:0.1.0 .           # the demo WebSocket workload
#
# manifests/deployment.yaml runs the first, manifests/examples/ws-demo-deployment.yaml the second;
# .github/workflows/release.yml builds both for linux/amd64 and linux/arm64 on a version tag.
#
# Base images are pinned by digest, so a rebuild uses the same bytes. NB: these digests were
# taken from public repositories and could not be checked where this file was written (no
# registry reachable): check them with
#   docker buildx imagetools inspect rust:1.95-slim-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# (the digest of the multi-arch index, not of one platform's image), and let Renovate or
# Dependabot (docker ecosystem) bump tag and digest together; both read the FROM lines below
# (written out, not ARGs, which Dependabot does not follow).

# cargo-chef: the dependency graph as a recipe, so that dependencies are compiled in a layer of
# their own that only a Cargo.toml or Cargo.lock change invalidates, not a source edit.
FROM rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS chef
RUN cargo install --locked cargo-chef@0.1.78
WORKDIR /src

FROM chef AS planner
# The whole context minus .dockerignore: Cargo refuses a workspace whose member or declared
# target ([[bench]] under benches/, tests/) is missing, even one not built.
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# recipe.json changes only with the manifests and the lock file: this layer and the next stay
# cached across source edits.
COPY --from=planner /src/recipe.json recipe.json
# The crates.io download is a cache mount; the compiled dependencies stay in the layer (a target
# cache mount would hide them from the next step).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --locked --release -p ws-metrics-adapter -p ws-demo --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --locked --release -p ws-metrics-adapter -p ws-demo \
    && install -D -m 0755 target/release/ws-metrics-adapter /out/ws-metrics-adapter \
    && install -D -m 0755 target/release/ws-demo /out/ws-demo

# glibc + libgcc and a nonroot user; no shell, no package manager. Both images start from this
# stage and inherit its labels and user. No version, revision, source or created label here:
# they would be second copies of Cargo.toml and git; the release workflow adds them
# (docker/metadata-action) and a local build can with --label.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f AS runtime
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
