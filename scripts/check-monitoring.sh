#!/usr/bin/env bash
# Checks overlays/monitoring offline: the PrometheusRule's spec (a plain Prometheus rules file)
# with `promtool check rules`, its unit tests (overlays/monitoring/tests/*.yaml) with `promtool
# test rules`, that every alert has a test where it fires and one where it stays silent, and that
# dashboard.json is a Grafana dashboard whose every panel has a PromQL expression that promtool
# parses. Running every panel against a real Prometheus is the e2e test
# crates/e2e/tests/dashboard.rs.
#
# Usage: scripts/check-monitoring.sh
# Needs: bash, promtool (Debian's `prometheus` package: scripts/install-deps.sh), python3 with
#        PyYAML (Debian's python3-yaml).
# Exit:  0 all checks passed; 1 a check failed; 2 setup failed (a missing tool is a failure,
#        never a skip).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR="$REPO_ROOT/overlays/monitoring"
PYTHON=${PYTHON:-python3}

die() { echo "check-monitoring: $*" >&2; exit 2; }
command -v promtool >/dev/null || die "promtool not found: install Debian's prometheus package (scripts/install-deps.sh)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
"$PYTHON" -c 'import yaml' 2>/dev/null || die "$PYTHON has no PyYAML (Debian: python3-yaml)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- the rules: spec of the PrometheusRule, as promtool reads rule files --------------------
# Also copies the test fixtures next to it (they name `rules.yaml` in rule_files) and checks
# that every alert is tested both firing and silent.
"$PYTHON" - "$DIR" "$WORK" <<'PY'
import glob, os, shutil, sys
import yaml

src, work = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(os.path.join(src, "prometheus-rule.yaml"))) if d]
if len(docs) != 1 or docs[0].get("kind") != "PrometheusRule":
    sys.exit("FAIL  prometheus-rule.yaml must hold exactly one PrometheusRule (the Helm chart reads it as is)")
spec = docs[0]["spec"]
with open(os.path.join(work, "rules.yaml"), "w") as f:
    yaml.safe_dump(spec, f, sort_keys=False)
alerts = [r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r]
if not alerts:
    sys.exit("FAIL  prometheus-rule.yaml has no alerts")
problems = []
for g in spec["groups"]:
    for r in g["rules"]:
        if "alert" not in r:
            continue
        name = r["alert"]
        if not r.get("for"):
            problems.append(f"{name}: no `for`")
        if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{name}: severity label must be critical, warning or info")
        ann = r.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                problems.append(f"{name}: no {key} annotation")

fixtures = sorted(glob.glob(os.path.join(src, "tests", "*.yaml")))
if not fixtures:
    problems.append("no promtool test fixtures in overlays/monitoring/tests/")
fires, silent = set(), set()
for path in fixtures:
    t = yaml.safe_load(open(path))
    if t.get("rule_files") != ["rules.yaml"]:
        problems.append(f"{os.path.basename(path)}: rule_files must be [rules.yaml] (the extracted spec)")
    for case in t.get("tests") or []:
        for a in case.get("alert_rule_test") or []:
            (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    shutil.copy(path, os.path.join(work, os.path.basename(path)))
for name in alerts:
    if name not in fires:
        problems.append(f"{name}: no test where it fires")
    if name not in silent:
        problems.append(f"{name}: no test where it stays silent")
for name in sorted((fires | silent) - set(alerts)):
    problems.append(f"tests name {name}, which is not an alert of prometheus-rule.yaml")
for p in problems:
    print(f"FAIL  {p}")
if problems:
    sys.exit(1)
print(f"ok    {len(alerts)} alerts, each with for/severity/summary/description/runbook_url, each tested firing and silent")
PY

(cd "$WORK" && promtool check rules rules.yaml) || { echo "FAIL  promtool check rules"; exit 1; }
fixtures=()
for f in "$DIR"/tests/*.yaml; do fixtures+=("$(basename "$f")"); done
(cd "$WORK" && promtool test rules "${fixtures[@]}") || { echo "FAIL  promtool test rules"; exit 1; }
echo "ok    promtool check rules and promtool test rules"

# --- the dashboard -----------------------------------------------------------------------------
# Every panel (rows excepted) has a target with an expr; every expr, with the dashboard's
# variables replaced by sample values, is parsed by promtool as a recording rule.
"$PYTHON" - "$DIR/dashboard.json" "$WORK/dashboard-rules.yaml" <<'PY'
import json, sys
import yaml

path, out = sys.argv[1], sys.argv[2]
try:
    dash = json.load(open(path))
except ValueError as e:
    sys.exit(f"FAIL  dashboard.json does not parse: {e}")
problems = []
if dash.get("schemaVersion", 0) < 36:
    problems.append("schemaVersion must be at least 36")
variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    problems.append("no `datasource` variable of type datasource over prometheus")
if "namespace" not in variables:
    problems.append("no `namespace` variable")
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels") or [])
rules, n = [], 0
for p in panels(dash.get("panels") or []):
    if p.get("type") == "row":
        continue
    n += 1
    title = p.get("title") or f"panel id {p.get('id')}"
    if (p.get("datasource") or {}).get("uid") != "${datasource}":
        problems.append(f"panel {title!r}: datasource is not ${{datasource}}")
    exprs = [t.get("expr", "").strip() for t in p.get("targets") or []]
    if not exprs or not all(exprs):
        problems.append(f"panel {title!r}: every target needs an expr (and there must be one)")
    for i, e in enumerate(exprs):
        e = e.replace("${datasource}", "prometheus").replace("$__rate_interval", "1m").replace("$namespace", "chat")
        rules.append({"record": f"dashboard:panel{p.get('id')}:target{i}", "expr": e})
if n == 0:
    problems.append("no panels")
for p in problems:
    print(f"FAIL  dashboard.json: {p}")
if problems:
    sys.exit(1)
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(out, "w"), sort_keys=False)
print(f"ok    dashboard.json: {n} panels, {len(rules)} expressions")
PY
promtool check rules "$WORK/dashboard-rules.yaml" >/dev/null \
    || { promtool check rules "$WORK/dashboard-rules.yaml" || true; echo "FAIL  a dashboard expression does not parse"; exit 1; }
echo "ok    every dashboard expression parses (promtool)"
