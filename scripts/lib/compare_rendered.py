"""Checks that the Helm chart's default render and the kustomize base hold the same objects, with
the same specs, so that the two cannot drift apart silently (scripts/validate-chart.sh).

Usage: compare_rendered.py INDEX.tsv CHART_SET BASE_SET   Exit 1 on a difference, each printed.

Compared: the set of (kind, namespace, name), minus the base's Namespace (the chart installs into
the release namespace, `helm install --create-namespace`), then every object's content except
metadata.labels/annotations (Helm adds its own labels). The intended differences are written
out in INTENDED below, each with its reason; anything else is a failure.
"""
import copy
import sys
import yaml

index, chart_set, base_set = sys.argv[1:4]
objs = {chart_set: {}, base_set: {}}
for line in open(index):
    path, s, _, kind, nsname = line.rstrip("\n").split("\t")
    if s in objs:
        objs[s][(kind, nsname)] = yaml.safe_load(open(path))

# Chart-only args: explicit values of the adapter's defaults, so that the chart's values
# (servingTLS.managed.certValidity, externalMetrics.enabled) can change them.
CHART_ONLY_ARGS = ("--serving-cert-validity=", "--apiservices=")
# Base-only: env POD_NAMESPACE, which the base's args read as $(POD_NAMESPACE) so that a
# kustomize overlay can move the namespace; the chart writes the release namespace instead.
BASE_ONLY_ENV = ("POD_NAMESPACE",)

def normalize(o, is_chart):
    o = copy.deepcopy(o)
    meta = o["metadata"]
    meta.pop("labels", None)
    meta.pop("annotations", None)
    if o["kind"] == "Deployment":
        t = o["spec"]["template"]
        t["metadata"].pop("labels", None)
        t["metadata"].pop("annotations", None)
        for c in t["spec"]["containers"]:
            if is_chart:
                c["args"] = [a for a in c.get("args", []) if not a.startswith(CHART_ONLY_ARGS)]
            else:
                ns = meta["namespace"]
                c["args"] = [a.replace("$(POD_NAMESPACE)", ns) for a in c.get("args", [])]
                c["env"] = [e for e in c.get("env", []) if e["name"] not in BASE_ONLY_ENV]
            if not c.get("env"):
                c.pop("env", None)
    return o

errors = []
chart, base = objs[chart_set], objs[base_set]
base_ids = {k for k in base if k[0] != "Namespace"}
for k in sorted(base_ids - set(chart)):
    errors.append(f"{k[0]} {k[1]}: in manifests/ but not in the chart's default render")
for k in sorted(set(chart) - base_ids):
    errors.append(f"{k[0]} {k[1]}: in the chart's default render but not in manifests/")

def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a:
                yield f"{path}/{key}: only in manifests/: {b[key]!r}"
            elif key not in b:
                yield f"{path}/{key}: only in the chart: {a[key]!r}"
            else:
                yield from diff(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff(x, y, f"{path}/{i}")
    elif a != b:
        yield f"{path}: chart {a!r}, manifests/ {b!r}"

for k in sorted(base_ids & set(chart)):
    for d in diff(normalize(chart[k], True), normalize(base[k], False)):
        errors.append(f"{k[0]} {k[1]}: {d}")

for e in errors:
    print(f"FAIL  drift    {e}")
if not errors:
    print(f"ok    drift    the chart's default render and manifests/ hold the same {len(base_ids)} objects"
          " (minus the Namespace), equal but for labels and the written-out intended differences")
sys.exit(1 if errors else 0)
