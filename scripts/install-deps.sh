#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, on a fresh Debian machine: promtool and
# prometheus (Debian's `prometheus` package; its service is not started, tests run their own) and
# kubectl (Debian's `kubernetes-client` when no kubectl is on PATH), HAProxy (Debian's `haproxy`: the
# control-plane tests' load balancer; they start it themselves, so its service is stopped and
# disabled where this script installs it), cargo-deny (from the crate registry, for `make lint`'s
# licence/ban/source check), and Python's `websockets` for the shed contract's example server
# (crates/e2e/tests/shed_contract.rs runs examples/shed-server/server.py). Other Python tools are
# installed by the scripts that use them. Go (1.26 or newer, for the control-plane binaries) is
# checked, not installed: Debian's
# golang is too old for Kubernetes 1.37. helm is built with that Go (scripts/install-helm.sh).
# Idempotent: installs nothing that is already there.
set -euo pipefail

need=()
{ command -v promtool && command -v prometheus; } >/dev/null || need+=(prometheus)
command -v kubectl >/dev/null || need+=(kubernetes-client)
# Debian puts haproxy in /usr/sbin, which a non-root user's PATH may lack.
{ command -v haproxy || [ -x /usr/sbin/haproxy ]; } >/dev/null || need+=(haproxy)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3 python3-pip)
if command -v python3 >/dev/null && ! python3 -m pip --version >/dev/null 2>&1; then
  need+=(python3-pip)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The package starts a system HAProxy where systemd runs; the tests need none.
  if [[ " ${need[*]} " == *" haproxy "* ]] && command -v systemctl >/dev/null \
    && systemctl is-system-running >/dev/null 2>&1; then
    "${sudo_cmd[@]}" systemctl disable --now haproxy >/dev/null 2>&1 || true
  fi
fi
for tool in promtool prometheus kubectl curl python3 cargo; do
  command -v "$tool" >/dev/null || { echo "install-deps: $tool is still missing" >&2; exit 1; }
done
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null \
  || { echo "install-deps: haproxy is still missing" >&2; exit 1; }
# cargo-deny checks deny.toml (licences, bans, sources). Built once (a few minutes on 2 cores) into
# ~/.cargo/bin; pinned, so every machine checks with the same rules.
deny_version=0.20.2
if [ "$(cargo deny --version 2>/dev/null || true)" != "cargo-deny $deny_version" ]; then
  echo "install-deps: building cargo-deny $deny_version (a few minutes the first time)"
  cargo install --locked --quiet "cargo-deny@$deny_version"
fi
# websockets, pinned in examples/shed-server/requirements.txt, installed with `pip --target` into a
# private directory (as scripts/validate-manifests.sh does: works on Debian's externally managed
# python3, PEP 668, and changes no package another tool relies on). The test puts that directory on
# PYTHONPATH, and fails with a hint to run this script when websockets cannot be imported.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ws-metrics-adapter/tools}
shed_py="$tools_dir/shed-server-python"
ws_want=$(sed -n 's/^websockets==//p' "$repo_root/examples/shed-server/requirements.txt")
ws_have=$(PYTHONPATH="$shed_py" python3 -c 'import websockets; print(websockets.__version__)' 2>/dev/null || true)
if [ "$ws_have" != "$ws_want" ]; then
  echo "install-deps: installing websockets==$ws_want into $shed_py"
  rm -rf "$shed_py"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location --target "$shed_py" -r "$repo_root/examples/shed-server/requirements.txt"
  ws_have=$(PYTHONPATH="$shed_py" python3 -c 'import websockets; print(websockets.__version__)')
  [ "$ws_have" = "$ws_want" ] || { echo "install-deps: websockets $ws_want installed but $ws_have imports" >&2; exit 1; }
fi
go_min=1.26
go_have="$(go env GOVERSION 2>/dev/null | sed 's/^go//')" || true
if [ -z "$go_have" ] || [ "$(printf '%s\n' "$go_min" "$go_have" | sort -V | head -1)" != "$go_min" ]; then
  echo "install-deps: Go >= $go_min is needed to build kube-apiserver for the control-plane tests" \
    "(found: ${go_have:-none}); install it from https://go.dev/dl" >&2
  exit 1
fi
# helm, pinned, built from its Go module (scripts/install-helm.sh; reused once built), for
# scripts/validate-chart.sh.
helm=$("$repo_root/scripts/install-helm.sh" | tail -n1)
echo "install-deps: promtool, prometheus, kubectl, haproxy, curl, python3 (websockets $ws_have), cargo, cargo-deny, Go $go_have and $("$helm" version --template '{{ .Version }}') ($helm) are present"
