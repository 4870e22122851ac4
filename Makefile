# One entry point for every task; CI (.ci/run) calls `make test`, the same command as the README.
.PHONY: demo test lint unit manifests dockerfile bench deps fmt

# The main job: the whole loop on one machine, no cluster (demo pods, adapter over TLS, load, HPA view).
demo:
	cargo run --release --locked --bin ws-metrics-adapter -- demo

# Every test: formatting, lints, unit/router/wire/e2e tests, manifests, Dockerfile.
test: deps lint unit manifests dockerfile

deps:
	./scripts/install-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

unit:
	cargo test --locked --lib --bins --tests

manifests:
	./scripts/validate-manifests.sh

dockerfile:
	./scripts/lint-dockerfile.sh

# Benchmarks (release build; figures are printed, not asserted). See README "Performance".
bench:
	cargo bench --locked --bench api --bench collection

fmt:
	cargo fmt --all
