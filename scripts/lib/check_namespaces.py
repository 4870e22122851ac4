"""Checks that every namespace a rendered set names is the one it is installed in (scripts/lib/validate-objects.sh).

Usage: check_namespaces.py INDEX.tsv SET NAMESPACE   Exit 1 on a finding, each printed.

Kustomize's `namespace:` and Helm's --namespace move metadata.namespace, but a namespace also
hides in RBAC subjects, APIService references, flags, certificate names and annotations; a
missed one fails only on a cluster (a forbidden watch, a TLS name mismatch). The single object
allowed elsewhere is the RoleBinding that must live in kube-system.
"""
import re
import sys
import yaml

index, want_set, want = sys.argv[1:4]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"}
# (kind, name) -> the namespace it must be in instead
ELSEWHERE = {("RoleBinding", "ws-metrics-adapter-auth-reader"): "kube-system"}
SERVICE = "ws-metrics-adapter"
OWN_ACCOUNT = "ws-metrics-adapter"

objs = []
for line in open(index):
    path, s, _, _, _ = line.rstrip("\n").split("\t")
    if s == want_set:
        objs.append(yaml.safe_load(open(path)))

errors = []
def err(o, msg): errors.append(f"{o['kind']} {o['metadata'].get('namespace', '-')}/{o['metadata']['name']}: {msg}")

def strings(v):
    if isinstance(v, dict):
        for k, x in v.items():
            yield from strings(k)
            yield from strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from strings(x)
    elif isinstance(v, str):
        yield v

# A namespace token: the whole string, ns/name, svc.ns.svc, namespace="ns" in a PromQL
# expression: delimited by the start or end, "/", ".", "=", a space or quotes.
# "ws-metrics-adapter" is not one.
def foreign_ns_tokens(s):
    return {m.group(2) for m in re.finditer(r"(^|[/.= \"'])([a-z0-9-]+)(?=[/.\"']|$)", s)}

for o in objs:
    k, meta = o["kind"], o["metadata"]
    expect = ELSEWHERE.get((k, meta["name"]), want)
    if k == "Namespace":
        if meta["name"] != want:
            err(o, f"a Namespace other than {want}")
    elif k not in CLUSTER_SCOPED and meta.get("namespace") != expect:
        err(o, f"metadata.namespace is {meta.get('namespace')!r}, want {expect!r}")
    for subj in o.get("subjects", []) or []:
        if subj.get("kind") == "ServiceAccount" and subj.get("name") == OWN_ACCOUNT \
                and subj.get("namespace") != want:
            err(o, f"subject ServiceAccount {subj.get('namespace')}/{OWN_ACCOUNT}, want namespace {want}")
    if k == "APIService":
        ref = (o["spec"].get("service") or {})
        if ref.get("namespace") != want:
            err(o, f"spec.service.namespace is {ref.get('namespace')!r}, want {want!r}")
    inject = (meta.get("annotations") or {}).get("cert-manager.io/inject-ca-from")
    if inject is not None and not inject.startswith(want + "/"):
        err(o, f"cert-manager.io/inject-ca-from is {inject!r}, want {want}/…")
    if k == "Certificate" and "dnsNames" in o["spec"]:
        if f"{SERVICE}.{want}.svc" not in o["spec"]["dnsNames"]:
            err(o, f"dnsNames {o['spec']['dnsNames']} lack {SERVICE}.{want}.svc")
    if k == "Deployment":
        for c in o["spec"]["template"]["spec"]["containers"]:
            flags = dict(a.split("=", 1) for a in c.get("args", []) or [] if a.startswith("--") and "=" in a)
            if "--serving-ca-secret" in flags:
                # NAME alone is in the pod's own namespace; NAMESPACE/NAME must name this one.
                v = flags["--serving-ca-secret"]
                if "/" in v and v.split("/", 1)[0] != want:
                    err(o, f"--serving-ca-secret={v}: namespace is not {want}")
                # Unset, the names follow the Secret's namespace (ws-metrics-adapter.NS.svc).
                if "--serving-cert-dns-names" in flags:
                    dns = flags["--serving-cert-dns-names"].split(",")
                    if f"{SERVICE}.{want}.svc" not in dns:
                        err(o, f"--serving-cert-dns-names={','.join(dns)} lacks {SERVICE}.{want}.svc")
    # Any other spelling of a namespace in any string (flags, annotations, URLs).
    if want != "ws-metrics":
        for s in strings(o):
            if "ws-metrics" in foreign_ns_tokens(s):
                err(o, f"still names namespace ws-metrics: {s!r}")

if not objs:
    errors.append(f"set {want_set}: no objects")
for e in errors:
    print(f"FAIL  namespace  {want_set}: {e}")
if not errors:
    print(f"ok    namespace  {want_set}: every object, subject, reference and flag names {want}")
sys.exit(1 if errors else 0)
