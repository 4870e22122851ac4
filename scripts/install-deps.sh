#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, on a fresh Debian machine: promtool and
# prometheus (Debian's `prometheus` package; its service is not started, tests run their own) and
# kubectl (Debian's `kubernetes-client` when no kubectl is on PATH), HAProxy (Debian's `haproxy`: the
# control-plane tests' load balancer; they start it themselves, so its service is stopped and
# disabled where this script installs it), and cargo-deny (from the crate
# registry, for `make lint`'s licence/ban/source check). Python tools are installed by the scripts
# that use them. Go (1.26 or newer, for the control-plane binaries) is checked, not installed: Debian's
# golang is too old for Kubernetes 1.37. Idempotent: installs nothing that is already there.
set -euo pipefail

need=()
{ command -v promtool && command -v prometheus; } >/dev/null || need+=(prometheus)
command -v kubectl >/dev/null || need+=(kubernetes-client)
# Debian puts haproxy in /usr/sbin, which a non-root user's PATH may lack.
{ command -v haproxy || [ -x /usr/sbin/haproxy ]; } >/dev/null || need+=(haproxy)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3 python3-pip)

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
go_min=1.26
go_have="$(go env GOVERSION 2>/dev/null | sed 's/^go//')" || true
if [ -z "$go_have" ] || [ "$(printf '%s\n' "$go_min" "$go_have" | sort -V | head -1)" != "$go_min" ]; then
  echo "install-deps: Go >= $go_min is needed to build kube-apiserver for the control-plane tests" \
    "(found: ${go_have:-none}); install it from https://go.dev/dl" >&2
  exit 1
fi
echo "install-deps: promtool, prometheus, kubectl, haproxy, curl, python3, cargo, cargo-deny and Go $go_have are present"
