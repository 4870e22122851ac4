#!/usr/bin/env bash
# Checks the GitHub Actions workflows in .github/workflows/: each parses as YAML, the release
# workflow runs only on a version tag and grants `packages: write` only to the jobs that push,
# and actionlint (pinned, built from its Go module on first run) finds nothing.
#
# Usage: scripts/lint-workflows.sh
# Needs: bash, python3 with PyYAML, Go (to build actionlint once; network to the Go module proxy).
# Env:   TOOLS_DIR  where the pinned tools are installed (default: ~/.cache/ws-metrics-adapter/tools)
# Exit:  0 clean; 1 findings; 2 setup failed.
set -euo pipefail

# Pinned: every machine applies the same rules.
ACTIONLINT_VERSION=v1.7.12

TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ws-metrics-adapter/tools}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "lint-workflows: $*" >&2; exit 2; }

actionlint="$TOOLS_DIR/actionlint-$ACTIONLINT_VERSION/actionlint"
if [[ "$("$actionlint" -version 2>/dev/null | head -n1 || true)" != "$ACTIONLINT_VERSION" ]]; then
    command -v go >/dev/null || die "actionlint $ACTIONLINT_VERSION not built and no Go to build it"
    echo "lint-workflows: building actionlint $ACTIONLINT_VERSION into ${actionlint%/*}" >&2
    rm -rf "${actionlint%/*}"
    # The version `actionlint -version` prints comes from the module version (Go build info).
    GOBIN="${actionlint%/*}" GOFLAGS=-buildvcs=false \
        go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" >&2 \
        || die "go install github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION failed"
    [[ "$("$actionlint" -version | head -n1)" == "$ACTIONLINT_VERSION" ]] \
        || die "built $actionlint but it does not report $ACTIONLINT_VERSION"
fi

rc=0
python3 - "$REPO_ROOT/.github/workflows" <<'PY' || rc=1
import pathlib, sys
import yaml

errors = []
files = sorted(pathlib.Path(sys.argv[1]).glob("*.y*ml"))
if not files:
    errors.append("no workflow files")
for f in files:
    try:
        wf = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        errors.append(f"{f.name}: not YAML: {e}")
        continue
    print(f"ok    {f.name}: parses")
release = pathlib.Path(sys.argv[1]) / "release.yml"
if release.exists():
    wf = yaml.safe_load(release.read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as true
    if on != {"push": {"tags": ["v*"]}}:
        errors.append(f"release.yml: must run only on a pushed v* tag, runs on {on!r}")
    if wf.get("permissions") != {"contents": "read"}:
        errors.append(f"release.yml: workflow permissions must be contents: read, are {wf.get('permissions')!r}")
    for name, job in wf["jobs"].items():
        text = yaml.safe_dump(job)
        pushes = "push: true" in text or "helm push" in text
        writes = (job.get("permissions") or {}).get("packages") == "write"
        if pushes != writes:
            errors.append(f"release.yml job {name}: pushes={pushes} but packages: write={writes}")
    if not errors:
        print("ok    release.yml: only on v* tags; packages: write exactly in the jobs that push")
for e in errors:
    print(f"FAIL  {e}")
sys.exit(1 if errors else 0)
PY
# shellcheck of run: blocks too when shellcheck is on PATH (actionlint uses it if present).
if "$actionlint" -no-color "$REPO_ROOT"/.github/workflows/*.yml; then
    echo "ok    actionlint $ACTIONLINT_VERSION$(command -v shellcheck >/dev/null || echo ' (no shellcheck on PATH: run: scripts not checked)'): no findings"
else
    echo "FAIL  actionlint $ACTIONLINT_VERSION: findings above"; rc=1
fi
exit $rc
