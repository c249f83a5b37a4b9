#!/usr/bin/env bash
# Installs what building and testing Sesame needs on a fresh Debian machine,
# skipping whatever is already there (safe to run repeatedly):
# - the Rust toolchain pinned in rust-toolchain.toml (protoc is vendored);
# - Debian packages: a C compiler, make, pkgconf and the OpenSSL and zlib
#   headers that librdkafka (the Kafka client, built from source by the
#   rdkafka crate) needs (Debian's Rust images have them already), cmake
#   (tansu's TLS dependency, aws-lc-sys, may build with it), and
#   `prometheus` for promtool and the live Prometheus test, and for the
#   deploy tests `buildah` (builds and runs the container image without a
#   Docker engine), `docker-compose` (validates deploy/compose.yaml),
#   `curl`, and `openssl` (its s_client offers old TLS versions in the
#   test that the server refuses them);
# - a Python virtual environment (outside the clone, in the CI cache) with
#   pinned helm-python-sdk (Helm's Go SDK: renders and lints the chart) and
#   kubernetes-validate (Kubernetes' JSON schemas);
# - tansu, the Apache-Kafka-compatible broker the Kafka tests start
#   (`cargo install tansu --locked --features dynostore`, ~15 min the first
#   time; the binary stays in ~/.cargo/bin afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
# rust-toolchain.toml pins the version and asks for rustfmt and clippy.
rustup show active-toolchain >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true

DEBIAN_PACKAGES=(make gcc g++ cmake pkgconf libssl-dev zlib1g-dev prometheus
    buildah docker-compose curl python3-venv openssl)
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
    echo "setup: installing tansu $TANSU_VERSION (Kafka-compatible broker for the tests; ~15 min once)"
    # Its own temporary target directory: not the workspace's cache.
    env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --locked \
        --features dynostore --quiet
fi

# The chart tests' Python tools; versions pinned so a render is repeatable.
HELM_VENV="${SESAME_PY_VENV:-$HOME/.cache/sesame-ci/pyvenv}"
PY_PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.2)
if ! "$HELM_VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml' >/dev/null 2>&1; then
    echo "setup: creating the chart-test Python environment in $HELM_VENV"
    python3 -m venv "$HELM_VENV"
    "$HELM_VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

cargo --version
promtool --version 2>&1 | head -n 1 || true
"$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")" --version 2>/dev/null \
    || echo "tansu installed"
