#!/usr/bin/env bash
# The deployment tests (run by scripts/test.sh after the workspace tests,
# whose debug build of `sesame` they use):
# - the Helm chart rendered by Helm's Go engine, linted, schema-validated
#   against Kubernetes and checked for its properties (helm/tests);
# - deploy/compose.yaml validated by docker-compose, its settings loaded by
#   the real binary (deploy/tests);
# - the container image built with buildah and `sesame serve` inside it
#   driven to APPROVED (deploy/test-image.sh).
# Needs what scripts/setup.sh installs (the Python environment, buildah,
# docker-compose, promtool).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${SESAME_BIN:-$TARGET/debug/sesame}"
PY="${SESAME_PY_VENV:-$HOME/.cache/sesame-ci/pyvenv}/bin/python"
if [ ! -x "$BIN" ]; then
    cargo build --locked -p sesame
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
export SESAME_BIN="$BIN"

echo "test-deploy: Helm chart"
"$PY" -m unittest discover -s helm/tests -t helm/tests
echo "test-deploy: compose file"
"$PY" -m unittest discover -s deploy/tests -t deploy/tests
echo "test-deploy: container image"
deploy/test-image.sh "$BIN"
