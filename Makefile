# One entry point for every task; CI (.ci/run) calls `make test`, the same command as the README.
.PHONY: demo test lint unit manifests dockerfile bench deps fmt control-plane control-plane-binaries

# The main job: the whole loop on one machine, no cluster (demo pods, adapter over TLS, load, HPA view).
demo:
	cargo run --release --locked --bin ws-metrics-adapter -- demo

# Every test: formatting, lints, unit/router/wire/e2e tests (the control-plane tests included),
# manifests, Dockerfile.
test: deps control-plane-binaries lint unit manifests dockerfile

deps:
	./scripts/install-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

unit:
	cargo test --locked --lib --bins --tests

# kube-apiserver, kube-controller-manager and etcd built from Go modules (tests/control_plane/go):
# about 10 minutes the first time on 2 cores, cached afterwards.
control-plane-binaries:
	./scripts/build-control-plane.sh

# The adapter behind the real kube-aggregator, read by the real HPA controller; refreshes the
# timelines in docs/ from target/control-plane/.
control-plane: control-plane-binaries
	cargo test --locked --test control_plane -- --nocapture
	mkdir -p docs && cp target/control-plane/timeline-* docs/

manifests:
	./scripts/validate-manifests.sh

dockerfile:
	./scripts/lint-dockerfile.sh

# Benchmarks (release build; figures are printed, not asserted). See README "Performance".
bench:
	cargo bench --locked --bench api --bench collection --bench auth

fmt:
	cargo fmt --all
