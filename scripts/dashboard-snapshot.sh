#!/usr/bin/env bash
# The dashboard after a load run: starts `sesame serve` (release build,
# durable embedded store), a real Prometheus scraping it every second with
# the project's rules, runs a sesame-loadtest surge against it, and renders
# every dashboard panel from Prometheus into docs/perf/dashboard-surge.svg
# (deploy/grafana/render_panels.py; rate windows shortened to 15 s for a
# two-minute run). A benchmark, not a test: the README's test command does
# not run it.
#
#   cargo build --release -p sesame -p sesame-loadtest
#   scripts/dashboard-snapshot.sh [rate] [factor]     # default 150/s, x6 surge
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${1:-150}"
FACTOR="${2:-6}"
REL="${CARGO_TARGET_DIR:-target}/release"
OUT="${SNAPSHOT_OUT:-docs/perf/dashboard-surge.svg}"
tmp="$(mktemp -d)"
cleanup() {
    kill "${prom:-}" "${server:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

SESAME_LISTEN=127.0.0.1:50061 SESAME_ADMIN_LISTEN=127.0.0.1:9474 \
SESAME_DATA_DIR="$tmp/data" SESAME_LOG=warn \
SESAME_GUARD__DEFAULTS__ONE_PENDING=false SESAME_GUARD__DEFAULTS__MAX_PROMPTS=100000 \
    "$REL/sesame" serve >"$tmp/serve.log" 2>&1 &
server=$!
cat >"$tmp/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["$PWD/deploy/prometheus/sesame-rules.yml"]
scrape_configs:
  - job_name: sesame
    static_configs:
      - targets: ["127.0.0.1:9474"]
        labels: {role: all}
YAML
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prom" \
    --web.listen-address=127.0.0.1:9099 >"$tmp/prom.log" 2>&1 &
prom=$!
for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:9474/ready >/dev/null 2>&1 && curl -fsS http://127.0.0.1:9099/-/ready >/dev/null 2>&1 && break
    sleep 0.2
done

start=$(date +%s)
"$REL/sesame-loadtest" --server http://127.0.0.1:50061 --data-dir "$tmp/data" \
    --users 4000 --server-pid "$server" --out "$tmp/result.json" \
    surge --rate "$RATE" --factor "$FACTOR" --before 30 --during 40 --after 30
sleep 3
end=$(date +%s)
python3 deploy/grafana/render_panels.py --prometheus http://127.0.0.1:9099 \
    --start "$((start - 10))" --end "$end" --step 2s --rate-window 15s \
    --title "Sesame dashboard, rendered from Prometheus: surge ${RATE}/s x${FACTOR} for 40 s (rate windows 15 s)" \
    --out "$OUT"
