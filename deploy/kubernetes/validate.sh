#!/usr/bin/env bash
# Checks deploy/kubernetes and deploy/compose without a cluster, a Docker engine or network:
#   1. every Kubernetes manifest against the official Kubernetes JSON schemas (strict: unknown
#      fields fail), for the oldest and the newest Kubernetes version we support; the schemas
#      ship inside the kubernetes-validate package;
#   2. the kustomize output of base/ and keda/ the same way (when kubectl is on the PATH);
#   3. compose.yaml against the Compose Specification schema shipped in check-jsonschema;
#   4. the consistency tests (settings, secrets, probes, ports, topics, scaling).
# Usage: deploy/kubernetes/validate.sh   (VENV=path overrides the virtualenv, default .venv)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${VENV:-$repo/.venv}
py="$venv/bin/python"
versions=(1.30.0 1.37.0)

if [[ ! -x $py ]]; then
  echo "validate: no virtualenv at $venv; run deploy/local/test.sh once, or set VENV" >&2
  exit 2
fi
if ! "$py" -c 'import kubernetes_validate, check_jsonschema, yaml' 2>/dev/null; then
  echo "validate: installing the validators into $venv" >&2
  "$py" -m pip install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0 check-jsonschema==0.39.0 pyyaml==6.0.3
fi

manifests=()
for file in "$here"/base/*.yaml; do
  [[ $(basename "$file") == kustomization.yaml ]] || manifests+=("$file")
done

for version in "${versions[@]}"; do
  echo "validate: Kubernetes $version manifests"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
done

if command -v kubectl >/dev/null 2>&1; then
  for overlay in base keda; do
    echo "validate: kustomize $overlay"
    # The ScaledObject is a KEDA custom resource: no bundled schema (the tests check it).
    kubectl kustomize "$here/$overlay" \
      | "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "${versions[-1]}" -
  done
else
  echo "validate: kubectl not found; skipping the kustomize renders" >&2
fi

echo "validate: compose.yaml against the Compose Specification"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$repo/deploy/compose/compose.yaml"

echo "validate: consistency tests"
cd "$repo"
"$py" -m pytest -q -m "not integration" tests/deploy/test_manifests.py
