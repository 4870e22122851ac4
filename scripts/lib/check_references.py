"""Cross-object checks of rendered manifests that no schema expresses (scripts/lib/validate-objects.sh).

Usage: check_references.py INDEX.tsv   (the index split_objects.py prints). Exit 1 on a finding.
"""
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
        volumes = {v["name"] for v in t["spec"].get("volumes", [])}
        for c in t["spec"]["containers"]:
            port_names = {p.get("name") for p in c.get("ports", [])}
            port_numbers = {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = (c.get(probe) or {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    errors.append(f"Deployment {name(d)}: {probe} uses port {port!r}, not a container port name")
            mounts = c.get("volumeMounts", [])
            for m in mounts:
                if m["name"] not in volumes:
                    errors.append(f"Deployment {name(d)}: volumeMount {m['name']!r} names no volume of the pod")
            for a in c.get("args", []):
                flag, _, value = a.partition("=")
                # A file the adapter reads (--tls-cert-file, --remote-write-bearer-token-file, ...)
                # must be in a mounted volume: the image holds none, its root is read-only.
                if flag.startswith("--") and flag.endswith("-file") and value.startswith("/") \
                        and not any(value.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
                    errors.append(f"Deployment {name(d)}: {flag} {value} is in no volumeMount of container {c['name']}")
                # A listener's port must be a container port (the Service and probes name those).
                port = value.rpartition(":")[2] if flag.endswith("-bind-address") else \
                    value if flag == "--secure-port" else None
                if port is not None and (not port.isdigit() or int(port) not in port_numbers):
                    errors.append(f"Deployment {name(d)}: {a} listens on no container port of container {c['name']}")
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
    for np in kind("NetworkPolicy", s):
        matched = matching_pods(np, np["spec"].get("podSelector", {}).get("matchLabels", {}))
        if not matched:
            errors.append(f"NetworkPolicy {ns(np)}/{name(np)}: podSelector selects no pod template")
        # An ingress rule for a port no selected container listens on admits nothing.
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                for d, t in matched:
                    cports = [cp for c in t["spec"]["containers"] for cp in c.get("ports", [])]
                    if "port" in p and not any(p["port"] in (cp.get("name"), cp["containerPort"]) for cp in cports):
                        errors.append(f"NetworkPolicy {name(np)}: ingress port {p['port']!r} is not a port of Deployment {name(d)}")
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

# A ServiceMonitor must select a Service of its set in its namespace, by a port name that Service
# has; an overlay applied beside the base (overlays/monitoring) selects the base's Service.
for s in sorted({t for t, _ in objs}):
    for sm in kind("ServiceMonitor", s):
        services = kind("Service", s) or kind("Service", "base")
        sel = sm["spec"].get("selector", {}).get("matchLabels", {})
        matched = [svc for svc in services if ns(svc) == ns(sm) and selects(sel, svc["metadata"].get("labels", {}))]
        if not matched:
            errors.append(f"ServiceMonitor {ns(sm)}/{name(sm)}: selects no Service in its namespace")
        for ep in sm["spec"].get("endpoints", []):
            for svc in matched:
                if ep.get("port") not in [p.get("name") for p in svc["spec"]["ports"]]:
                    errors.append(f"ServiceMonitor {name(sm)}: Service {name(svc)} has no port named {ep.get('port')!r}")

for e in errors:
    print(f"FAIL  references {e}")
sys.exit(1 if errors else 0)
