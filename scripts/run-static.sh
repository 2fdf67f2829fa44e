#!/usr/bin/env bash
# `make run`: Envoy with the filter in static mode (envoy/envoy-static.yaml) in front
# of two test backends. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=target/release/test-backend
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$backend" stable 8081 > /dev/null & pids+=($!)
"$backend" canary 8082 > /dev/null & pids+=($!)
.venv/bin/envoy -c envoy/envoy-static.yaml --concurrency 2 --disable-hot-restart -l warning & pids+=($!)

for _ in $(seq 1 300); do
  curl -fs 127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs 127.0.0.1:9901/ready >/dev/null || { echo "Envoy did not become ready"; exit 1; }

cat <<'TXT'

policy-canary is running: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:9901), 10% of
sessions on the canary policy v2.4.0, the rest on stable v2.3.1.

The split — 1000 sessions, count which backend answered:
  for i in $(seq 1000); do curl -s -H "x-session-id: user-$i" 127.0.0.1:10000/chat | grep -o '"backend":"[a-z]*"'; done | sort | uniq -c

Stickiness — the same session always lands on the same backend:
  for i in 1 2 3 4 5; do curl -s -H 'x-session-id: user-42' 127.0.0.1:10000/chat | grep -o '"backend":"[a-z]*"'; done

Force the canary for a manual check (x-canary: true | 1 | canary; false | 0 | stable):
  curl -s -H 'x-session-id: user-42' -H 'x-canary: true' 127.0.0.1:10000/chat | grep -o '"backend":"[a-z]*"'

Internal users get the canary (a segment at 100%):
  curl -s -H 'x-session-id: user-42' -H 'x-user-group: internal' 127.0.0.1:10000/chat | grep -o '"backend":"[a-z]*"'

Agent telemetry (the backend echoes x-reply-* headers as response headers):
  curl -s -H 'x-session-id: user-42' -H 'x-reply-x-agent-outcome: completed' -H 'x-reply-x-agent-cost-micros: 1200' 127.0.0.1:10000/chat >/dev/null

Per-version stats, labelled for Prometheus:
  curl -s 127.0.0.1:9901/stats/prometheus | grep '^policy_canary_'

Ctrl-C stops Envoy and the backends.
TXT
wait
