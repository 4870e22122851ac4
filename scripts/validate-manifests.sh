#!/usr/bin/env bash
# Validates the kustomize output of manifests/, manifests/examples/, overlays/external-metrics/
# and overlays/monitoring/ offline (no cluster):
# every rendered object against the Kubernetes OpenAPI schemas with `kubernetes-validate
# --strict`, then a few cross-object references no schema can express.
#
# Usage: scripts/validate-manifests.sh
# Needs: bash, kubectl (built-in kustomize), python3 with pip (network to PyPI on first run).
# Env:   PYTHON     interpreter to use (default: python3)
#        TOOLS_DIR  where the pinned tools are installed (default: ~/.cache/ws-metrics-adapter/tools)
# Exit:  0 all objects valid; 1 validation failed; 2 setup failed.
set -euo pipefail

# Pinned. The newest Kubernetes version this release has schemas for is picked at run time.
KUBERNETES_VALIDATE_VERSION=1.37.0

PYTHON=${PYTHON:-python3}
TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ws-metrics-adapter/tools}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# kustomization directory and a short name for each rendered set
SETS=("base:manifests" "examples:manifests/examples" "external:overlays/external-metrics"
    "monitoring:overlays/monitoring")
# Prometheus Operator kinds (overlays/monitoring): CRDs, so kubernetes-validate has no schema for
# them. Skipped here, each with a printed reason; scripts/check-monitoring.sh checks the rules
# with promtool, and the reference checks below check the ServiceMonitor against the Service.
declare -A SKIP_KINDS=(
    ["monitoring.coreos.com/v1 ServiceMonitor"]="its selector and port are checked against the base Service below"
    ["monitoring.coreos.com/v1 PrometheusRule"]="its rules are checked by scripts/check-monitoring.sh (promtool)"
)

die() { echo "validate-manifests: $*" >&2; exit 2; }

command -v kubectl >/dev/null || die "kubectl not found (needed for 'kubectl kustomize')"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"

# --- kubernetes-validate -------------------------------------------------------------------
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
            || die "pip could not install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
        [[ "$(installed_kv_version "$KV_PYTHONPATH")" == "$KUBERNETES_VALIDATE_VERSION" ]] \
            || die "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION installed but not importable"
    fi
fi
py() { PYTHONPATH="$KV_PYTHONPATH" "$PYTHON" "$@"; }

# Newest Kubernetes version with bundled schemas (what the tool would default to), passed
# explicitly with -k so the report says what was checked.
K8S_VERSION=$(py -c 'import kubernetes_validate.utils as u; print(u.latest_version())')
[[ -n "$K8S_VERSION" ]] || die "could not read the schema versions of kubernetes-validate"

# --- render and split ----------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/objects"

for set in "${SETS[@]}"; do
    name=${set%%:*} dir=${set#*:}
    kubectl kustomize "$REPO_ROOT/$dir" >"$WORK/$name.yaml" \
        || { echo "FAIL kubectl kustomize $dir" >&2; exit 1; }
done

# Split each multi-document stream into one file per object, keeping the rendered text as is
# (no YAML round trip). Writes an index: file <TAB> set <TAB> apiVersion <TAB> Kind <TAB> ns/name.
py - "$WORK" "${SETS[@]%%:*}" >"$WORK/index.tsv" <<'PY'
import os, re, sys
import yaml

work, sets = sys.argv[1], sys.argv[2:]
n = 0
for s in sets:
    text = open(os.path.join(work, s + ".yaml")).read()
    for chunk in re.split(r"(?m)^---[ \t]*$", text):
        obj = yaml.safe_load(chunk)
        if not obj:
            continue
        if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
            sys.exit(f"{s}: rendered document is not a Kubernetes object:\n{chunk}")
        meta = obj.get("metadata") or {}
        nsname = "/".join(p for p in (meta.get("namespace"), meta.get("name", "?")) if p)
        n += 1
        path = os.path.join(work, "objects", f"{n:03d}-{s}.yaml")
        with open(path, "w") as f:
            f.write(chunk.lstrip("\n"))
        print("\t".join([path, s, obj["apiVersion"], obj["kind"], nsname]))
PY

# --- schema validation ---------------------------------------------------------------------
total=0 failed=0
skipped=0
while IFS=$'\t' read -r file set api_version kind nsname; do
    if [[ -n "${SKIP_KINDS["$api_version $kind"]:-}" ]]; then
        skipped=$((skipped + 1))
        printf 'skip  %-9s %-24s %s: a Prometheus Operator CRD, no schema in kubernetes-validate; %s\n' \
            "$set" "$kind" "$nsname" "${SKIP_KINDS["$api_version $kind"]}"
        continue
    fi
    total=$((total + 1))
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
done <"$WORK/index.tsv"

# --- references between objects ------------------------------------------------------------
# Schemas check each object alone, and only structure and types (no enums, ranges, name or
# quantity formats: that is the apiserver's own validation, which needs a cluster). These
# checks catch mistakes that pass them but break the deployment: selectors that select
# nothing, ports that do not exist, an APIService aimed at a missing Service or with
# out-of-range priorities, RBAC bound to a missing ServiceAccount.
ref_rc=0
py - "$WORK/index.tsv" <<'PY' || ref_rc=$?
import sys
import yaml

objs = []
for line in open(sys.argv[1]):
    path, s, _, _, _ = line.rstrip("\n").split("\t")
    objs.append((s, yaml.safe_load(open(path))))

def ns(o): return o["metadata"].get("namespace")
def name(o): return o["metadata"]["name"]
def kind(k, s): return [o for t, o in objs if o["kind"] == k and t == s]
def selects(sel, labels): return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

errors = []
for s in sorted({t for t, _ in objs}):
    deployments = kind("Deployment", s)
    pods = [(d, d["spec"]["template"]) for d in deployments]
    for d, t in pods:
        sel = d["spec"]["selector"].get("matchLabels", {})
        if not selects(sel, t["metadata"].get("labels", {})):
            errors.append(f"Deployment {name(d)}: selector {sel} does not match its pod template labels")
        for c in t["spec"]["containers"]:
            port_names = {p.get("name") for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = (c.get(probe) or {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    errors.append(f"Deployment {name(d)}: {probe} uses port {port!r}, not a container port name")
    def matching_pods(o, sel):
        return [(d, t) for d, t in pods if ns(d) == ns(o) and selects(sel, t["metadata"].get("labels", {}))]
    for svc in kind("Service", s):
        matched = matching_pods(svc, svc["spec"].get("selector", {}))
        if not matched:
            errors.append(f"Service {ns(svc)}/{name(svc)}: selector selects no pod template")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for d, t in matched:
                cports = [cp for c in t["spec"]["containers"] for cp in c.get("ports", [])]
                if not any(tp in (cp.get("name"), cp["containerPort"]) for cp in cports):
                    errors.append(f"Service {name(svc)}: targetPort {tp!r} is not a port of Deployment {name(d)}")
    for pdb in kind("PodDisruptionBudget", s):
        if not matching_pods(pdb, pdb["spec"].get("selector", {}).get("matchLabels", {})):
            errors.append(f"PodDisruptionBudget {ns(pdb)}/{name(pdb)}: selector selects no pod template")
    services = {(ns(o), name(o)): o for o in kind("Service", s)}
    for api in kind("APIService", s):
        sp = api["spec"]
        if name(api) != f"{sp['version']}.{sp['group']}":
            errors.append(f"APIService {name(api)}: name must be {sp['version']}.{sp['group']}")
        # apiserver-side rules (custom-metrics-api.md §5.1) that the OpenAPI schema lacks
        if not 1 <= sp.get("groupPriorityMinimum", 0) <= 20000:
            errors.append(f"APIService {name(api)}: groupPriorityMinimum must be in 1..20000")
        if not 1 <= sp.get("versionPriority", 0) <= 1000:
            errors.append(f"APIService {name(api)}: versionPriority must be in 1..1000")
        if sp.get("insecureSkipTLSVerify") and sp.get("caBundle"):
            errors.append(f"APIService {name(api)}: caBundle and insecureSkipTLSVerify are mutually exclusive")
        ref = sp.get("service") or {}
        svc = services.get((ref.get("namespace"), ref.get("name")))
        if svc is None:
            errors.append(f"APIService {name(api)}: Service {ref.get('namespace')}/{ref.get('name')} is not in the manifests")
        elif ref.get("port", 443) not in [p["port"] for p in svc["spec"]["ports"]]:
            errors.append(f"APIService {name(api)}: Service {name(svc)} has no port {ref.get('port', 443)}")
    # Subjects in namespaces these manifests create must exist; others (kube-system) are external.
    own_ns = {name(o) for o in kind("Namespace", s)}
    accounts = {(ns(o), name(o)) for o in kind("ServiceAccount", s)}
    for b in kind("RoleBinding", s) + kind("ClusterRoleBinding", s):
        for subj in b.get("subjects", []):
            if subj["kind"] == "ServiceAccount" and subj.get("namespace") in own_ns \
                    and (subj["namespace"], subj["name"]) not in accounts:
                errors.append(f"{b['kind']} {name(b)}: ServiceAccount {subj['namespace']}/{subj['name']} is not in the manifests")
    for d, t in pods:
        sa = t["spec"].get("serviceAccountName")
        if sa and (ns(d), sa) not in accounts:
            errors.append(f"Deployment {name(d)}: ServiceAccount {ns(d)}/{sa} is not in the manifests")

# The monitoring overlay is applied next to the base: its ServiceMonitor must select the base's
# Service in the same namespace, by a port name that Service has.
base_services = kind("Service", "base")
for sm in kind("ServiceMonitor", "monitoring"):
    sel = sm["spec"].get("selector", {}).get("matchLabels", {})
    matched = [svc for svc in base_services if ns(svc) == ns(sm) and selects(sel, svc["metadata"].get("labels", {}))]
    if not matched:
        errors.append(f"ServiceMonitor {ns(sm)}/{name(sm)}: selects no Service of the base in its namespace")
    for ep in sm["spec"].get("endpoints", []):
        for svc in matched:
            if ep.get("port") not in [p.get("name") for p in svc["spec"]["ports"]]:
                errors.append(f"ServiceMonitor {name(sm)}: Service {name(svc)} has no port named {ep.get('port')!r}")

for e in errors:
    print(f"FAIL  references {e}")
sys.exit(1 if errors else 0)
PY
if [[ $ref_rc -eq 0 ]]; then
    echo "ok    references between objects (selectors, ports, APIService -> Service, RBAC subjects, ServiceMonitor -> Service)"
fi

[[ $total -gt 0 ]] || { echo "FAIL  no objects rendered"; exit 1; }
echo "validated $total objects against Kubernetes $K8S_VERSION" \
    "(kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict): $failed failed schema validation," \
    "$skipped CRD objects skipped (listed above)," \
    "reference checks $([[ $ref_rc -eq 0 ]] && echo passed || echo FAILED)"
[[ $failed -eq 0 && $ref_rc -eq 0 ]]
