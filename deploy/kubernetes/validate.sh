#!/bin/sh
# Renders and validates the Kubernetes manifests offline (see validate.py), in a virtual
# environment with requirements.txt, created on first use and refreshed when the requirements
# change. Environment: PYTHON (3.11+, default python3), SCOUTER_K8S_VENV (default
# target/tools/venvs/k8s). Arguments are passed to validate.py.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${SCOUTER_K8S_VENV:-$repo/target/tools/venvs/k8s}
if ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/requirements.txt"
fi
exec "$venv/bin/python" "$here/validate.py" "$@"
