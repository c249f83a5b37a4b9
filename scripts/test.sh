#!/usr/bin/env bash
# The README's test command: format, lints, and every test of the workspace
# (unit, storage conformance, proto drift, end-to-end over loopback gRPC,
# SIGKILL durability), then the deployment tests (Helm chart, compose file,
# container image). Benchmarks are separate: `cargo bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The chart, the compose file and the container image (uses the debug
# build of `sesame` that the tests above made).
./scripts/test-deploy.sh
