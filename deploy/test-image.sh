#!/usr/bin/env bash
# The image test: builds the image with deploy/build-image.sh, runs
# `sesame serve` inside it (as its non-root user, /data a host directory,
# the host's network), drives `sesame demo` from outside to APPROVED, and
# checks the process inside answered on its admin port. Fails (never skips)
# when buildah cannot build or run the image.
#
#   deploy/test-image.sh [path/to/sesame]
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:-${CARGO_TARGET_DIR:-target}/release/sesame}"
IMAGE=localhost/sesame:test
B=(buildah --storage-driver vfs)
GRPC_PORT="${SESAME_IMAGE_TEST_PORT:-50951}"
ADMIN_PORT=$((GRPC_PORT + 1))

deploy/build-image.sh "$BIN" "$IMAGE"

data="$(mktemp -d)"
chown 65532:65532 "$data"
ctr="$("${B[@]}" from "$IMAGE")"
cleanup() {
    [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
    "${B[@]}" rmi "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$data"
}
trap cleanup EXIT

# The entrypoint with its default command, as the image's config says.
"${B[@]}" run --isolation chroot --network host --user 65532:65532 \
    -v "$data:/data" \
    --env SESAME_LISTEN="127.0.0.1:$GRPC_PORT" --env SESAME_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    "$ctr" -- /usr/local/bin/sesame serve >"$data/serve.log" 2>&1 &
server=$!

for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { echo "test-image: sesame serve exited:"; cat "$data/serve.log"; exit 1; }
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || { echo "test-image: never ready:"; cat "$data/serve.log"; exit 1; }

out="$("$BIN" demo --server "http://127.0.0.1:$GRPC_PORT" --data-dir "$data" --timeout 20)"
echo "$out" | tail -n 2
grep -q '^verdict: APPROVED$' <<<"$out"
# Written inside the container, as the non-root user, into the mounted /data.
[ "$(stat -c %u "$data/sesame.redb")" = 65532 ]
# Read whole, then searched: `curl | grep -q` fails under pipefail when grep
# stops reading first (curl exits 23).
metrics="$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics")"
grep -q '^sesame_challenges_created_total{tenant="dev"} 1' <<<"$metrics"
grep -q '"level":"INFO"' "$data/serve.log"
echo "test-image: sesame serve inside $IMAGE approved a login"
