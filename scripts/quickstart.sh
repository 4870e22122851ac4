#!/usr/bin/env bash
# Quick start without a cluster: three fake "pods" (static metrics files served by python's
# http.server), the adapter in static mode over TLS, and the real kubectl reading the custom
# metrics API the way the HPA does. One pod's count changes every two seconds so you can watch the
# API follow it. Runs for QUICKSTART_SECONDS (default 20) or until Ctrl-C.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${QUICKSTART_SECONDS:-20}
work=$(mktemp -d "${TMPDIR:-/tmp}/ws-metrics-quickstart.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

for tool in cargo python3 kubectl curl; do
  command -v "$tool" >/dev/null || { echo "quickstart: '$tool' is required" >&2; exit 1; }
done

echo "==> building the adapter (release; the first build takes a few minutes)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin ws-metrics-adapter
bin="$root/target/release/ws-metrics-adapter"

cp -r "$root/examples/quickstart/." "$work/"
python3 -m http.server 18901 --bind 127.0.0.1 --directory "$work/pods" >"$work/pods.log" 2>&1 &
pids+=($!)

"$bin" serve --static-pods "$work/pods.yaml" --secure-port 18443 \
  --metrics-bind-address 127.0.0.1:18080 --cert-dir "$work/certs" >"$work/adapter.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs http://127.0.0.1:18080/readyz >/dev/null || { echo "adapter did not become ready:" >&2; cat "$work/adapter.log" >&2; exit 1; }

kubeconfig="$work/kubeconfig"
cat >"$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: ws-metrics-adapter
  cluster:
    server: https://127.0.0.1:18443
    certificate-authority: $work/certs/ca.crt
users:
# Static mode does not authenticate; a token only stops kubectl from prompting for a password.
- name: local
  user: {token: static-mode-needs-no-credentials}
contexts:
- name: local
  context: {cluster: ws-metrics-adapter, user: local}
current-context: local
KC

path='/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/websocket_connections?labelSelector=app%3Dws-demo'
# Ready means "pods known and one round done"; wait for the first values too (python may start late).
for _ in $(seq 1 50); do
  kubectl --kubeconfig "$kubeconfig" get --raw "$path" 2>/dev/null | grep -q '"value"' && break
  sleep 0.2
done
echo "==> adapter ready; the HPA's request, through the real kubectl:"
echo "    kubectl --kubeconfig $kubeconfig get --raw '$path'"
kubectl --kubeconfig "$kubeconfig" get --raw "$path" | python3 -m json.tool
echo "==> per-pod values as they change (ws-0's chat route grows by 50 every 2 s; ws-2 exposes the family with no series = explicit 0):"
start=$(date +%s)
chat=412
while [ $(( $(date +%s) - start )) -lt "$seconds" ]; do
  chat=$((chat + 50))
  printf '# TYPE websocket_connections_active gauge\nwebsocket_connections_active{route="chat"} %s\nwebsocket_connections_active{route="echo"} 88\n' "$chat" \
    >"$work/pods/ws-0/metrics.tmp" && mv "$work/pods/ws-0/metrics.tmp" "$work/pods/ws-0/metrics"
  sleep 2
  kubectl --kubeconfig "$kubeconfig" get --raw "$path" | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
pairs = ["%s=%s" % (i["describedObject"]["name"], i["value"]) for i in items]
print("   ", "  ".join(pairs), "(file says ws-0=%s+88)" % sys.argv[1])
' "$chat"
done
echo "==> the chat route alone (metricLabelSelector, what an HPA metric.selector sends):"
kubectl --kubeconfig "$kubeconfig" get --raw "${path}&metricLabelSelector=route%3Dchat" | python3 -c '
import json, sys
for i in json.load(sys.stdin)["items"]:
    print("   ", i["describedObject"]["name"], i["value"], i["metric"]["selector"])'
echo "==> the adapter's own metrics: curl http://127.0.0.1:18080/metrics (scrape outcomes):"
curl -fs http://127.0.0.1:18080/metrics | grep '^ws_metrics_adapter_scrapes_total' | sed 's/^/    /'
echo "==> done"
