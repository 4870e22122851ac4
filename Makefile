# One entry point for every task; CI (.ci/run) calls `make test`, the same command as the README.
.PHONY: demo test lint unit manifests dockerfile bench bench-peers deps fmt control-plane control-plane-binaries fuzz fuzz-smoke

# The main job: the whole loop on one machine, no cluster (demo pods, adapter over TLS, load, HPA view).
demo:
	cargo run --release --locked -p ws-demo -- demo

# Every test: formatting, lints, unit/router/wire/e2e tests (the control-plane tests included),
# manifests and chart, Dockerfile.
test: deps control-plane-binaries lint unit fuzz-smoke manifests dockerfile

deps:
	./scripts/install-deps.sh

# Formatting, lints, the shape of the code (no module imports another in a cycle; the product's
# dependency tree holds nothing of the demo) and the dependency policy in deny.toml.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	python3 scripts/check-module-cycles.py --self-test
	python3 scripts/check-module-cycles.py
	./scripts/check-product-deps.sh
	cargo deny --locked check --hide-inclusion-graph licenses bans sources

# The workspace's default members: the adapter, the demo and the end-to-end harness. One cargo
# invocation builds every binary before it runs any test (the harness runs them as processes).
unit:
	cargo test --locked --workspace --exclude ws-metrics-adapter-fuzz --lib --bins --tests

# Fuzz targets of the parsers that read network bytes (fuzz/: exposition, selector, path,
# http_response, remote_write). Not coverage-guided: the seed corpus, then seeded random mutations.
# fuzz-smoke: the corpus replay test and a short bounded run per target (debug build, shared
# with the tests). fuzz: a long run per target, optimised with overflow checks on; a crashing
# input is written to fuzz/artifacts/TARGET/ and the run fails.
FUZZ_TARGETS ?= exposition selector path http_response remote_write
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_RUNS ?= 100000

fuzz-smoke:
	cargo test --locked -p ws-metrics-adapter-fuzz
	for t in $(FUZZ_TARGETS); do \
		cargo run --locked -q -p ws-metrics-adapter-fuzz -- $$t --runs $(FUZZ_SMOKE_RUNS) || exit 1; \
	done

fuzz:
	for t in $(FUZZ_TARGETS); do \
		cargo run --locked -q --profile fuzz -p ws-metrics-adapter-fuzz -- $$t --seconds $(FUZZ_SECONDS) || exit 1; \
	done

# kube-apiserver, kube-controller-manager and etcd built from Go modules (crates/e2e/tests/control_plane/go):
# about 10 minutes the first time on 2 cores, cached afterwards.
control-plane-binaries:
	./scripts/build-control-plane.sh

# The adapter behind the real kube-aggregator, read by the real HPA controller; refreshes the
# timelines in docs/ from target/control-plane/.
control-plane: control-plane-binaries
	cargo build --locked --workspace --bins
	cargo test --locked -p ws-e2e --test control_plane -- --nocapture
	mkdir -p docs && cp target/control-plane/timeline-* docs/

# The kustomize manifests and the Helm chart (helm built from its Go module on first run), each
# render schema-checked, the chart's renders compared with the kustomize sets; the monitoring
# overlay's rules (promtool check/test rules) and dashboard; the release workflow that publishes
# images and chart (actionlint, built the same way).
manifests:
	./scripts/validate-manifests.sh
	./scripts/check-monitoring.sh
	./scripts/validate-chart.sh
	./scripts/lint-workflows.sh

dockerfile:
	./scripts/lint-dockerfile.sh

# Benchmarks (release build; figures are printed, not asserted). See README "Performance".
bench:
	cargo bench --locked -p ws-metrics-adapter --bench api --bench collection --bench auth --bench hostile --bench remote_write

# This adapter and prometheus-adapter v0.12.0 (built from its Go module, pinned in
# crates/e2e/benches/prometheus-adapter/) side by side: one kube-apiserver + etcd (the control-plane
# binaries), one Debian Prometheus, the same fake pods, the same read, interleaved runs
# (crates/e2e/benches/peers.rs; figures printed, not asserted; not part of `make test`). Knobs:
# WSMA_BENCH_PODS (1000), WSMA_BENCH_SECONDS (10 per run), WSMA_BENCH_ROUNDS (2),
# WSMA_BENCH_CONNS (1,16). The adapter binary is built in the bench profile beside the bench,
# which finds it in target/release/.
bench-peers: deps control-plane-binaries
	./scripts/build-prometheus-adapter.sh
	cargo build --locked --profile bench -p ws-metrics-adapter --bin ws-metrics-adapter
	cargo bench --locked -p ws-e2e --bench peers

fmt:
	cargo fmt --all
