#!/usr/bin/env bash
# Installs what building and testing Sesame needs on a fresh Debian machine.
# Today that is only the Rust toolchain pinned in rust-toolchain.toml (protoc
# is vendored, the embedded store is pure Rust). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
# rust-toolchain.toml pins the version and asks for rustfmt and clippy.
rustup show active-toolchain >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version
