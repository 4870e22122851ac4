# syntax=docker/dockerfile:1
# Container image for ws-metrics-adapter (manifests/deployment.yaml runs it).
#
#   docker build -t ws-metrics-adapter:0.1.0 .
#
# The builder compiles the one binary named by BIN. Another binary of the package (the
# ws-demo server of a later issue) gets its own final stage that copies /out/<name>, built with
#   docker build --build-arg BIN=ws-demo --target ws-demo -t ws-demo .
# The adapter's stage stays last, so it remains the default target.

FROM rust:1.95-slim-bookworm AS builder
ARG BIN=ws-metrics-adapter
WORKDIR /src
# The whole context minus .dockerignore: Cargo refuses to build when a target the manifest
# declares (src/bin/*, [[bench]] under benches/, tests/) is missing, even one not being built.
COPY . .
# Cache mounts keep the crates.io download and the incremental target dir between builds;
# the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release --bin "${BIN}" \
    && install -D -m 0755 "target/release/${BIN}" "/out/${BIN}"

# glibc + libgcc, CA certificates and a nonroot user; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS ws-metrics-adapter
COPY --from=builder /out/ws-metrics-adapter /ws-metrics-adapter
# Same UID/GID as runAsUser/runAsGroup in manifests/deployment.yaml.
USER 65532:65532
# 6443: HTTPS custom metrics API; 8080: /livez, /readyz, /metrics (plain HTTP).
EXPOSE 6443 8080
ENTRYPOINT ["/ws-metrics-adapter"]
CMD ["serve"]
