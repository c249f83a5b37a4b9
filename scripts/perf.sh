#!/usr/bin/env bash
# Runs the load-test scenarios behind docs/performance.md on this machine and
# writes their JSON and SVG results to docs/perf/. Everything on loopback:
#   embedded   the all-in-one server (durable embedded store, fsync on)
#   kafka      tansu + a server (challenge, verifier, ratelimit) + one dispatcher
# Usage: scripts/perf.sh [embedded|kafka|all]   (release build, a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
out=docs/perf
mkdir -p "$out"
cargo build --release -q -p sesame -p sesame-loadtest
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# The load tester logs in thousands of times per user: give the guard room.
export SESAME_LOG=warn SESAME_GUARD__DEFAULTS__ONE_PENDING=false SESAME_GUARD__DEFAULTS__MAX_PROMPTS=1000000

loadtest() { "$target/sesame-loadtest" --quiet "$@"; }

if [ "$which" = embedded ] || [ "$which" = all ]; then
    port=$(free_port)
    SESAME_ADMIN_LISTEN="" "$target/sesame" serve --listen "127.0.0.1:$port" --data-dir "$work/embedded" &
    pids+=($!); server=$!
    wait_port "$port"; sleep 0.5
    url="http://127.0.0.1:$port"
    # Warm-up (new store file, cold caches), not recorded.
    loadtest --server "$url" --data-dir "$work/embedded" --users 500 steady --rate 100 --secs 5 >/dev/null
    loadtest --server "$url" --data-dir "$work/embedded" --users 2000 --server-pid "$server" \
        --out "$out/embedded-ramp.json" --chart "$out/embedded-ramp.svg" \
        ramp --start 200 --step-factor 1.3 --step-secs 8 --target-p99-ms 50
    kill "$server"; wait "$server" || true

    # The surge, on a fresh server (like the comparison runs below): the
    # defaults (latency ceiling on), then the ceiling off.
    for variant in ceiling no-ceiling; do
        ceiling=3
        [ "$variant" = no-ceiling ] && ceiling=0
        port=$(free_port)
        SESAME_ADMISSION__TARGET_LATENCY_MS=$ceiling SESAME_ADMIN_LISTEN="" "$target/sesame" serve \
            --listen "127.0.0.1:$port" --data-dir "$work/embedded-$variant" &
        pids+=($!); server=$!
        wait_port "$port"; sleep 0.5
        url="http://127.0.0.1:$port"
        loadtest --server "$url" --data-dir "$work/embedded-$variant" --users 500 steady --rate 100 --secs 5 >/dev/null
        loadtest --server "$url" --data-dir "$work/embedded-$variant" --users 4000 --server-pid "$server" \
            --out "$out/embedded-surge-$variant.json" --chart "$out/embedded-surge-$variant.svg" \
            surge --rate 300 --factor 10 --before 10 --during 20 --after 15
        kill "$server"; wait "$server" || true
    done

    # Push bombing: the default guard (not the lenient one above), normal
    # logins at 100/s while an attacker asks 50 times a second for one user.
    port=$(free_port)
    env -u SESAME_GUARD__DEFAULTS__ONE_PENDING -u SESAME_GUARD__DEFAULTS__MAX_PROMPTS SESAME_ADMIN_LISTEN="" \
        "$target/sesame" serve --listen "127.0.0.1:$port" --data-dir "$work/embedded-bomb" &
    pids+=($!); server=$!
    wait_port "$port"; sleep 0.5
    loadtest --server "http://127.0.0.1:$port" --data-dir "$work/embedded-bomb" --users 3000 --server-pid "$server" \
        --out "$out/embedded-push-bomb.json" --chart "$out/embedded-push-bomb.svg" \
        push-bomb --rate 100 --secs 60 --attack-rate 50
    kill "$server"; wait "$server" || true

    # The same surge with admission control off, for comparison.
    port=$(free_port)
    SESAME_ADMISSION__ENABLED=false SESAME_ADMIN_LISTEN="" "$target/sesame" serve \
        --listen "127.0.0.1:$port" --data-dir "$work/embedded-off" &
    pids+=($!); server=$!
    wait_port "$port"; sleep 0.5
    url="http://127.0.0.1:$port"
    loadtest --server "$url" --data-dir "$work/embedded-off" --users 500 steady --rate 100 --secs 5 >/dev/null
    loadtest --server "$url" --data-dir "$work/embedded-off" --users 4000 --server-pid "$server" \
        --out "$out/embedded-surge-admission-off.json" --chart "$out/embedded-surge-admission-off.svg" \
        surge --rate 300 --factor 10 --before 10 --during 20 --after 15
    kill "$server"; wait "$server" || true
fi

if [ "$which" = kafka ] || [ "$which" = all ]; then
    tansu="$(command -v tansu || echo "$HOME/.cargo/bin/tansu")"
    kport=$(free_port)
    "$tansu" broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
        --storage-engine memory://tansu/ >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$kport"
    export SESAME_QUEUE="kafka://127.0.0.1:$kport" SESAME_KAFKA__REPLICATION_FACTOR=1
    port=$(free_port)
    SESAME_ADMIN_LISTEN="" "$target/sesame" serve --roles challenge,verifier,ratelimit \
        --listen "127.0.0.1:$port" --data-dir "$work/kafka" &
    pids+=($!); server=$!
    wait_port "$port"
    dport=$(free_port)
    SESAME_ADMIN_LISTEN="" SESAME_SIMULATOR_URL="http://127.0.0.1:$port" "$target/sesame" serve \
        --roles dispatcher --listen "127.0.0.1:$dport" &
    pids+=($!)
    wait_port "$dport"; sleep 2
    loadtest --server "http://127.0.0.1:$port" --data-dir "$work/kafka" --users 500 steady --rate 100 --secs 5 >/dev/null
    loadtest --server "http://127.0.0.1:$port" --data-dir "$work/kafka" --users 2000 --server-pid "$server" \
        --out "$out/kafka-ramp.json" --chart "$out/kafka-ramp.svg" \
        ramp --start 200 --step-factor 1.3 --step-secs 8 --target-p99-ms 50
    # A 10x surge on the same processes (defaults: no latency ceiling with Kafka).
    loadtest --server "http://127.0.0.1:$port" --data-dir "$work/kafka" --users 3000 --server-pid "$server" \
        --out "$out/kafka-surge.json" --chart "$out/kafka-surge.svg" \
        surge --rate 100 --factor 10 --before 10 --during 20 --after 15
fi
