# shellcheck shell=bash
# Shared by scripts/validate-manifests.sh (kustomize) and scripts/validate-chart.sh (Helm): checks
# rendered manifests offline (no cluster), every object against the Kubernetes OpenAPI schemas
# with `kubernetes-validate --strict`, then cross-object references no schema can express
# (check_references.py). Sourced, not run; the caller renders each set to $WORK/SET.yaml and
# calls validate_sets.
#
# Needs: python3 with pip (network to PyPI on first run).
# Env:   PYTHON     interpreter to use (default: python3)
#        TOOLS_DIR  where the pinned tools are installed (default: ~/.cache/ws-metrics-adapter/tools)
# Caller may set NO_SCHEMA_KINDS (associative array "apiVersion Kind" -> reason): objects of
# exactly those kinds are reported as skipped with the reason; any other kind without a schema
# fails.

# Pinned. The newest Kubernetes version this release has schemas for is picked at run time.
KUBERNETES_VALIDATE_VERSION=1.37.0

PYTHON=${PYTHON:-python3}
TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ws-metrics-adapter/tools}
VALIDATE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Callers add entries after sourcing this file.
declare -gA NO_SCHEMA_KINDS

kv_die() { echo "$(basename "$0" .sh): $*" >&2; exit 2; }

# Installs kubernetes-validate if needed; defines py() and K8S_VERSION.
kv_setup() {
    command -v "$PYTHON" >/dev/null || kv_die "$PYTHON not found (set PYTHON=...)"
    # Installed with `pip --target` into a private directory, not into the interpreter: that
    # works on Debian's externally managed python3 (PEP 668) without a venv or root, and never
    # changes packages other tools rely on. An interpreter that already has the pinned version
    # is used as is.
    KV_PYTHONPATH=""
    # The caller's PYTHONPATH is replaced, not extended, so nothing shadows the pinned packages.
    installed_kv_version() { # $1: PYTHONPATH ("" = the interpreter's own packages only)
        PYTHONPATH="$1" "$PYTHON" -c \
            'from kubernetes_validate.version import __version__; print(__version__)' 2>/dev/null || true
    }
    if [[ "$(installed_kv_version "")" != "$KUBERNETES_VALIDATE_VERSION" ]]; then
        KV_PYTHONPATH="$TOOLS_DIR/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
        if [[ "$(installed_kv_version "$KV_PYTHONPATH")" != "$KUBERNETES_VALIDATE_VERSION" ]]; then
            echo "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $KV_PYTHONPATH" >&2
            rm -rf "$KV_PYTHONPATH"
            PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
                --no-warn-script-location --target "$KV_PYTHONPATH" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
                || kv_die "pip could not install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
            [[ "$(installed_kv_version "$KV_PYTHONPATH")" == "$KUBERNETES_VALIDATE_VERSION" ]] \
                || kv_die "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION installed but not importable"
        fi
    fi
    py() { PYTHONPATH="$KV_PYTHONPATH" "$PYTHON" "$@"; }

    # Newest Kubernetes version with bundled schemas (what the tool would default to), passed
    # explicitly with -k so the report says what was checked.
    K8S_VERSION=$(py -c 'import kubernetes_validate.utils as u; print(u.latest_version())')
    [[ -n "$K8S_VERSION" ]] || kv_die "could not read the schema versions of kubernetes-validate"
}

# validate_sets WORK SET...: splits $WORK/SET.yaml into objects, validates each, checks the
# references between them; prints one line per object and a summary. Returns 0 when all pass.
validate_sets() {
    local work=$1; shift
    mkdir -p "$work/objects"
    py "$VALIDATE_LIB_DIR/split_objects.py" "$work" "$@" >"$work/index.tsv" || return 1
    local total=0 failed=0 skipped=0 file set api_version kind nsname rc out reason
    while IFS=$'\t' read -r file set api_version kind nsname; do
        total=$((total + 1))
        reason=${NO_SCHEMA_KINDS["$api_version $kind"]:-}
        if [[ -n "$reason" ]]; then
            skipped=$((skipped + 1))
            printf 'skip  %-9s %-24s %s (%s)\n' "$set" "$kind" "$nsname" "$reason"
            continue
        fi
        rc=0
        out=$(py -m kubernetes_validate --strict -k "$K8S_VERSION" "$file" 2>&1 </dev/null) || rc=$?
        # kubernetes-validate exits 0 when it has no schema for a kind and only prints a WARN
        # line, so any WARN is a failure too: an object we could not check is not a valid one.
        if [[ $rc -ne 0 ]] || grep -qE 'WARN|ERROR|FATAL' <<<"$out"; then
            failed=$((failed + 1))
            printf 'FAIL  %-9s %-24s %s\n' "$set" "$kind" "$nsname"
            if grep -q "Couldn't find schema" <<<"$out"; then
                echo "      kubernetes-validate $KUBERNETES_VALIDATE_VERSION has no schema for $api_version $kind" \
                    "(Kubernetes $K8S_VERSION built-ins only: a CRD kind or a misspelled apiVersion/kind)."
                echo "      It cannot be checked here; this is reported as a failure, not skipped."
            fi
            # name the object instead of the temporary file
            sed -e "s|$file|($set)|" -e 's/^/      /' <<<"$out"
        else
            printf 'ok    %-9s %-24s %s\n' "$set" "$kind" "$nsname"
        fi
    done <"$work/index.tsv"

    # Schemas check each object alone, and only structure and types (no enums, ranges, name or
    # quantity formats: that is the apiserver's own validation, which needs a cluster).
    # check_references.py catches mistakes that pass them but break the deployment: selectors
    # that select nothing, ports that do not exist (Service targets, NetworkPolicy ingress, the
    # adapter's listener flags), a file flag outside every volumeMount, an APIService aimed at a
    # missing Service or with out-of-range priorities, RBAC bound to a missing ServiceAccount.
    local ref_rc=0
    py "$VALIDATE_LIB_DIR/check_references.py" "$work/index.tsv" || ref_rc=$?
    if [[ $ref_rc -eq 0 ]]; then
        echo "ok    references between objects (selectors, ports, mounts, APIService -> Service, RBAC subjects, ServiceMonitor -> Service)"
    fi

    [[ $total -gt 0 ]] || { echo "FAIL  no objects rendered"; return 1; }
    echo "validated $((total - skipped)) objects against Kubernetes $K8S_VERSION" \
        "(kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict): $failed failed schema validation," \
        "$skipped skipped (no schema), reference checks $([[ $ref_rc -eq 0 ]] && echo passed || echo FAILED)"
    [[ $failed -eq 0 && $ref_rc -eq 0 ]]
}
