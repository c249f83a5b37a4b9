#!/usr/bin/env bash
# Installs what building and testing Sesame needs on a fresh Debian machine:
# the Rust toolchain pinned in rust-toolchain.toml (protoc is vendored, the
# embedded store is pure Rust) and Prometheus's promtool (Debian package
# `prometheus`) for the alert-rule tests. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
# rust-toolchain.toml pins the version and asks for rustfmt and clippy.
rustup show active-toolchain >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! command -v promtool >/dev/null 2>&1; then
    echo "setup: installing Debian's prometheus package (for promtool)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
cargo --version
promtool --version 2>&1 | head -n 1 || true
