#!/usr/bin/env bash
# The product crate carries nothing of the demo: no WebSocket client or server (tungstenite), no
# load generator, no progress bars (indicatif), no demo crate. Fails if `cargo tree` of
# ws-metrics-adapter (normal and build dependencies, its own features) names any of them.
# The same query on ws-demo must find them: otherwise the check itself is broken.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(ws-demo|tungstenite|tokio-tungstenite|indicatif|console) '
# Each tree is captured whole before grep reads it: `cmd | grep -q` under pipefail fails at random
# when grep exits at its first match and `cmd` dies of SIGPIPE. A failing `cargo tree` stops the
# script (set -e) with its own message.
tree() { cargo tree --locked -p "$1" -e normal,build --prefix none --no-dedupe | sort -u; }
product="$(tree ws-metrics-adapter)"
demo="$(tree ws-demo)"

if found="$(grep -E "$forbidden" <<<"$product")"; then
  echo "check-product-deps: ws-metrics-adapter depends on demo-only crates:" >&2
  echo "$found" >&2
  exit 1
fi
if ! grep -qE "$forbidden" <<<"$demo"; then
  echo "check-product-deps: the query found nothing in ws-demo either; the check is broken" >&2
  exit 1
fi
echo "check-product-deps: ws-metrics-adapter's dependency tree holds nothing of the demo"
