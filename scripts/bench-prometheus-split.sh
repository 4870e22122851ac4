#!/usr/bin/env bash
# The Prometheus source at 10,000 pods: a real Prometheus (Debian's) scrapes one exporter holding
# websocket_connections_active for 10,000 pods in 100 namespaces every 1 s; the adapter serves
# them with --prometheus-interval 1s and --prometheus-query-parts 1, 8 and 100 in turn, 20 s
# each, and the script prints per setting the rounds run, the queries, their mean duration and
# the failures, from the adapter's own /metrics.
#
# Usage: scripts/bench-prometheus-split.sh   (prints one line per setting)
# Env:   ADAPTER  the binary to run (default target/debug/ws-metrics-adapter, built if missing)
#        SECONDS_PER_SETTING (default 20); PARTS (default "1 8 100"); EXTRA: more adapter flags,
#        e.g. EXTRA=--prometheus-max-parallel-queries=2
# Needs: prometheus, python3, curl (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ADAPTER=${ADAPTER:-target/debug/ws-metrics-adapter}
SECONDS_PER_SETTING=${SECONDS_PER_SETTING:-20}
PARTS=${PARTS:-1 8 100}
EXTRA=${EXTRA:-}
[[ -x "$ADAPTER" ]] || cargo build --locked -p ws-metrics-adapter
for tool in prometheus python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-prometheus-split: $tool missing (scripts/install-deps.sh)" >&2; exit 2; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
exporter=$(free_port) prom=$(free_port) health=$(free_port)

python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
lines = ["# TYPE websocket_connections_active gauge"]
pods = ["pods:"]
for n in range(100):
    for p in range(100):
        lines.append(f'websocket_connections_active{{namespace="ns-{n}",pod="ws-{n}-{p}",route="chat"}} {p}')
        pods.append(f'- namespace: ns-{n}\n  name: ws-{n}-{p}\n  metricsUrl: "http://127.0.0.1:1/metrics"\n  labels: {{app: ws}}')
open(f"{work}/metrics", "w").write("\n".join(lines) + "\n")
open(f"{work}/pods.yaml", "w").write("\n".join(pods) + "\n")
PY
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 1s}
scrape_configs:
- job_name: exporter
  honor_labels: true
  static_configs: [{targets: ["127.0.0.1:$exporter"]}]
EOF
(cd "$work" && exec python3 -m http.server "$exporter" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom" >"$work/prometheus.log" 2>&1 &
pids+=($!)

count() {
  curl -s "http://127.0.0.1:$prom/api/v1/query?query=count(websocket_connections_active)" |
    python3 -c 'import sys, json; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0
}
for _ in $(seq 1 120); do [[ "$(count)" == 10000 ]] && break; sleep 0.5; done
[[ "$(count)" == 10000 ]] || { echo "bench-prometheus-split: Prometheus never held the 10,000 series" >&2; exit 1; }

metric() { # $1: metrics text, $2: sample name (exact, with labels)
  awk -v name="$2" '$1 == name {print $2}' <<<"$1"
}
for parts in $PARTS; do
  "$ADAPTER" serve --static-pods "$work/pods.yaml" --source prometheus \
    --prometheus-url "http://127.0.0.1:$prom" --prometheus-interval 1s \
    --prometheus-query-parts "$parts" --secure-port 0 --bind-address 127.0.0.1 \
    --metrics-bind-address "127.0.0.1:$health" --cert-dir "$work/certs-$parts" $EXTRA \
    >"$work/adapter-$parts.log" 2>&1 &
  adapter=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$health/readyz" >/dev/null && break; sleep 0.2; done
  before=$(curl -s "http://127.0.0.1:$health/metrics")
  sleep "$SECONDS_PER_SETTING"
  after=$(curl -s "http://127.0.0.1:$health/metrics")
  kill "$adapter"; wait "$adapter" 2>/dev/null || true
  python3 - "$parts" "$SECONDS_PER_SETTING" \
    "$(metric "$before" ws_metrics_adapter_prometheus_query_duration_seconds_count)" \
    "$(metric "$after" ws_metrics_adapter_prometheus_query_duration_seconds_count)" \
    "$(metric "$before" ws_metrics_adapter_prometheus_query_duration_seconds_sum)" \
    "$(metric "$after" ws_metrics_adapter_prometheus_query_duration_seconds_sum)" \
    "$(metric "$after" 'ws_metrics_adapter_prometheus_requests_total{kind="query",outcome="success"}')" \
    "$(grep -c '"prometheus query failed' "$work/adapter-$parts.log" || true)" "$EXTRA" <<'PY'
import sys
parts, secs, c0, c1, s0, s1, ok, failed = sys.argv[1:9]
n = float(c1 or 0) - float(c0 or 0)
t = float(s1 or 0) - float(s0 or 0)
per_round = min(int(parts), 100)
print(f"parts={parts} {sys.argv[9]}: {n:.0f} queries in {secs} s ({n / per_round:.1f} rounds of {per_round}), "
      f"mean {1000 * t / max(n, 1):.0f} ms per query, {failed} failure lines in the log")
PY
done
