#!/usr/bin/env bash
# `make run-static`: Envoy with the filter in static mode (envoy/envoy-static.yaml) in
# front of two test backends, and curl commands to try. Ctrl-C stops everything this
# script started.
#
# Settings (environment): the ports STABLE_PORT (8081), CANARY_PORT (8082),
# ADMIN_PORT (9901), LISTENER_PORT (10000); DEMO_DIR (.demo-static) for the generated
# Envoy config and logs; BACKEND and ENVOY_BIN name the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${BACKEND:-target/release/test-backend}
envoy=${ENVOY_BIN:-.venv/bin/envoy}
state=${DEMO_DIR:-.demo-static}
stable_port=${STABLE_PORT:-8081}
canary_port=${CANARY_PORT:-8082}
admin_port=${ADMIN_PORT:-9901}
listener_port=${LISTENER_PORT:-10000}

. scripts/lib.sh
require_free_ports "$stable_port" "$canary_port" "$admin_port" "$listener_port"

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$state"
mkdir -p "$state"
# envoy/envoy-static.yaml with these ports (unchanged with the defaults).
sed -e "s/port_value: 8081}/port_value: $stable_port}/" \
    -e "s/port_value: 8082}/port_value: $canary_port}/" \
    -e "s/port_value: 9901}/port_value: $admin_port}/" \
    -e "s/port_value: 10000}/port_value: $listener_port}/" \
    envoy/envoy-static.yaml > "$state/envoy.yaml"

"$backend" stable "$stable_port" > "$state/stable.log" 2>&1 & pids+=($!)
"$backend" canary "$canary_port" > "$state/canary.log" 2>&1 & pids+=($!)
"$envoy" -c "$state/envoy.yaml" --concurrency 2 --disable-hot-restart -l warning > "$state/envoy.log" 2>&1 & pids+=($!)

for _ in $(seq 1 300); do
  curl -fs "127.0.0.1:$admin_port/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "127.0.0.1:$admin_port/ready" >/dev/null || { echo "Envoy did not become ready; see $state/envoy.log" >&2; exit 1; }

l=127.0.0.1:$listener_port
cat <<TXT

policy-canary is running: Envoy on $l (admin 127.0.0.1:$admin_port), 10% of
sessions on the canary policy v2.4.0, the rest on stable v2.3.1.

The split — 1000 sessions, count which backend answered:
  for i in \$(seq 1000); do curl -s -H "x-session-id: user-\$i" $l/chat | grep -o '"backend":"[a-z]*"'; done | sort | uniq -c

Stickiness — the same session always lands on the same backend:
  for i in 1 2 3 4 5; do curl -s -H 'x-session-id: user-42' $l/chat | grep -o '"backend":"[a-z]*"'; done

Force the canary for a manual check (x-canary: true | 1 | canary; false | 0 | stable):
  curl -s -H 'x-session-id: user-42' -H 'x-canary: true' $l/chat | grep -o '"backend":"[a-z]*"'

Internal users get the canary (a segment at 100%):
  curl -s -H 'x-session-id: user-42' -H 'x-user-group: internal' $l/chat | grep -o '"backend":"[a-z]*"'

Agent telemetry (the backend echoes x-reply-* headers as response headers):
  curl -s -H 'x-session-id: user-42' -H 'x-reply-x-agent-outcome: completed' -H 'x-reply-x-agent-cost-micros: 1200' $l/chat >/dev/null

Per-version stats, labelled for Prometheus:
  curl -s 127.0.0.1:$admin_port/stats/prometheus | grep '^policy_canary_'

Ctrl-C stops Envoy and the backends.
TXT
wait
