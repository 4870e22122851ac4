"""Checks that the Helm chart's default render and the kustomize base hold the same objects, with
the same specs, so that the two cannot drift apart silently (scripts/validate-chart.sh).

Usage: compare_rendered.py INDEX.tsv CHART_SET BASE_SET BASE_DIR   Exit 1 on a difference, each
printed; BASE_DIR (the kustomization rendered as BASE_SET) names it in the messages.

Compared: the set of (kind, namespace, name), minus the base's Namespace (the chart installs into
the release namespace, `helm install --create-namespace`), then every object's content except
metadata.labels/annotations (Helm adds its own labels). The intended differences are written
out in INTENDED below, each with its reason; anything else is a failure.
"""
import copy
import sys
import yaml

index, chart_set, base_set, base_dir = sys.argv[1:5]
base_dir = base_dir.rstrip("/") + "/"
objs = {chart_set: {}, base_set: {}}
for line in open(index):
    path, s, _, kind, nsname = line.rstrip("\n").split("\t")
    if s in objs:
        objs[s][(kind, nsname)] = yaml.safe_load(open(path))

# Chart-only args: explicit values of the adapter's defaults, so that the chart's values
# (servingTLS.managed.certValidity) can change them.
CHART_ONLY_ARGS = ("--serving-cert-validity=",)
# Lists merged by name (a kustomize patch prepends, a template appends): compared as sets.
BY_NAME = {"volumes", "volumeMounts", "env", "ports", "containers"}

def sort_named(v):
    if isinstance(v, dict):
        return {k: (sorted((sort_named(x) for x in x_), key=lambda i: str(i.get("name")))
                    if k in BY_NAME and isinstance(x_, list) and all(isinstance(i, dict) for i in x_)
                    else sort_named(x_)) for k, x_ in v.items()}
    if isinstance(v, list):
        return [sort_named(x) for x in v]
    return v

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
    return sort_named(o)

errors = []
chart, base = objs[chart_set], objs[base_set]
base_ids = {k for k in base if k[0] != "Namespace"}
for k in sorted(base_ids - set(chart)):
    errors.append(f"{k[0]} {k[1]}: in {base_dir} but not in the chart's render ({chart_set})")
for k in sorted(set(chart) - base_ids):
    errors.append(f"{k[0]} {k[1]}: in the chart's render ({chart_set}) but not in {base_dir}")

def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a:
                yield f"{path}/{key}: only in {base_dir}: {b[key]!r}"
            elif key not in b:
                yield f"{path}/{key}: only in the chart: {a[key]!r}"
            else:
                yield from diff(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff(x, y, f"{path}/{i}")
    elif a != b:
        yield f"{path}: chart {a!r}, {base_dir} {b!r}"

for k in sorted(base_ids & set(chart)):
    for d in diff(normalize(chart[k], True), normalize(base[k], False)):
        errors.append(f"{k[0]} {k[1]}: {d}")

for e in errors:
    print(f"FAIL  drift    {e}")
if not errors:
    print(f"ok    drift    the chart's render ({chart_set}) and {base_dir} hold the same {len(base_ids)} objects"
          " (minus the Namespace), equal but for labels and the written-out intended differences")
sys.exit(1 if errors else 0)
