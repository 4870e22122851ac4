"""Splits rendered multi-document YAML streams into one file per object (scripts/lib/validate-objects.sh).

Usage: split_objects.py WORK SET...   reads WORK/SET.yaml, writes WORK/objects/NNN-SET.yaml and
prints an index line per object: file <TAB> set <TAB> apiVersion <TAB> Kind <TAB> ns/name.
The rendered text is kept as is (no YAML round trip).
"""
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
