#!/usr/bin/env bash
# `make run`: the whole system on this machine. The controller (state in .demo/),
# Envoy in controller mode (envoy/envoy.yaml) with the filter and the sync service,
# two demo agents, and steady traffic from a few thousand sticky sessions. It
# registers the example policies, starts a rollout with shortened stages and
# follows it live. The agents also act as a (simulated) LLM judge: they score half
# their answers and post the scores 20-60 s later (POST /v1/signals), and the demo
# plans gate on them. SCENARIO=regression rolls out v2.4.0, whose refund flow is
# broken, and the analysis rolls it back by itself; SCENARIO=judge rolls out v2.4.2,
# equal on every header metric but scored lower by the judge, rolled back by the
# judge gate; SCENARIO=manual holds each stage for an hour so that you steer it.
# Ctrl-C stops everything.
#
# Settings (environment): RATE (requests/s, 400), DEMO_DIR (.demo), the ports
# CONTROLLER_PORT (7070), STABLE_PORT (8081), CANARY_PORT (8082), ADMIN_PORT (9901),
# LISTENER_PORT (10000); DEMO_EXIT=1 ends the demo when the rollout ends, with
# `canaryctl rollout watch`'s exit code (0 promoted, 4 not); CANARYCTL and ENVOY_BIN
# name the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${SCENARIO:-promote}
case "$scenario" in
  promote) plan=envoy/plans/demo.yaml; canary=envoy/policies/v2.4.1.yaml ;;
  regression) plan=envoy/plans/demo-regression.yaml; canary=envoy/policies/v2.4.0.yaml ;;
  judge) plan=envoy/plans/demo-judge.yaml; canary=envoy/policies/v2.4.2.yaml ;;
  manual) plan=envoy/plans/demo-manual.yaml; canary=envoy/policies/v2.4.1.yaml ;;
  *) echo "SCENARIO must be promote, regression, judge or manual, not '$scenario'" >&2; exit 2 ;;
esac
rate=${RATE:-400}
canaryctl=${CANARYCTL:-target/release/canaryctl}
envoy=${ENVOY_BIN:-.venv/bin/envoy}
state=${DEMO_DIR:-.demo}
controller_port=${CONTROLLER_PORT:-7070}
stable_port=${STABLE_PORT:-8081}
canary_port=${CANARY_PORT:-8082}
admin_port=${ADMIN_PORT:-9901}
listener_port=${LISTENER_PORT:-10000}
export CANARYCTL_SERVER=http://127.0.0.1:$controller_port CANARYCTL_STATE_DIR="$state/state" CANARYCTL_ACTOR=demo

. scripts/lib.sh
require_free_ports "$controller_port" "$stable_port" "$canary_port" "$admin_port" "$listener_port"

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo
  echo "stopped; logs and state are in $state/"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # what url
  for _ in $(seq 1 300); do
    curl -fs "$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 did not become ready; see $state/*.log" >&2
  exit 1
}

rm -rf "$state"
mkdir -p "$state"
# envoy/envoy.yaml with the demo's ports (unchanged with the defaults).
sed -e "s/port_value: 7070}/port_value: $controller_port}/" \
    -e "s/port_value: 8081}/port_value: $stable_port}/" \
    -e "s/port_value: 8082}/port_value: $canary_port}/" \
    -e "s/port_value: 9901}/port_value: $admin_port}/" \
    -e "s/port_value: 10000}/port_value: $listener_port}/" \
    envoy/envoy.yaml > "$state/envoy.yaml"

"$canaryctl" serve --listen "127.0.0.1:$controller_port" --envoy-admin "http://127.0.0.1:$admin_port" \
  > "$state/controller.log" 2>&1 & pids+=($!)
wait_for "the controller" "http://127.0.0.1:$controller_port/healthz"
# Each part holds only what it needs; the state directory's bootstrap token (admin)
# makes these and registers the policies.
token() { "$canaryctl" token create "$1" --scope "$2" 2>/dev/null; }
envoy_token=$(token envoys routes:read)
agent_token=$(token agents policies:read)
operator_token=$(token demo-operator operate)
viewer_token=$(token dashboard read)
judge_token=$(token judge signals:write)
CANARYCTL_REGISTRY_TOKEN=$agent_token CANARYCTL_JUDGE_TOKEN=$judge_token "$canaryctl" agent --listen "127.0.0.1:$stable_port" --registry "$CANARYCTL_SERVER" --seed 1 > "$state/agent-stable.log" 2>&1 & pids+=($!)
CANARYCTL_REGISTRY_TOKEN=$agent_token CANARYCTL_JUDGE_TOKEN=$judge_token "$canaryctl" agent --listen "127.0.0.1:$canary_port" --registry "$CANARYCTL_SERVER" --seed 2 > "$state/agent-canary.log" 2>&1 & pids+=($!)
POLICY_CANARY_TOKEN=$envoy_token "$envoy" -c "$state/envoy.yaml" --concurrency 2 --disable-hot-restart -l warning > "$state/envoy.log" 2>&1 & pids+=($!)
wait_for Envoy "http://127.0.0.1:$admin_port/ready"

"$canaryctl" policy add envoy/policies/v2.3.1.yaml
"$canaryctl" policy add "$canary"
# The clusters the demo target may route to: an `operate` token's plans may name
# only these.
"$canaryctl" targets bind support-agent agent_stable agent_canary > /dev/null
# From here on the demo operates with the `operate` token only.
export CANARYCTL_TOKEN=$operator_token
(umask 077; printf '%s\n' "$operator_token" > "$state/operator-token"; printf '%s\n' "$viewer_token" > "$state/viewer-token")
started=$("$canaryctl" rollout start "$plan")
echo "${started%%$'\n'*}"
"$canaryctl" traffic --url "http://127.0.0.1:$listener_port/chat" --rate "$rate" --sessions 10000 \
  --report-every 0s > "$state/traffic.log" 2>&1 & pids+=($!)

cat <<TXT

Dashboard:  http://127.0.0.1:$controller_port/   sign in by pasting a token from a file:
            $state/viewer-token (read-only), $state/operator-token (pause/resume/promote/rollback)
Envoy:      127.0.0.1:$listener_port (admin 127.0.0.1:$admin_port), $rate req/s from 10000 sticky sessions
Scenario:   $scenario ($plan); logs in $state/

Try, in another terminal (tokens: $state/operator-token operates, $state/state/token is admin):
  export CANARYCTL_TOKEN_FILE=$state/operator-token PATH=\$PWD/target/release:\$PATH
  canaryctl rollout status
  canaryctl rollout pause --reason 'having a look'
  curl -s -H 'x-session-id: user-42' -H 'x-canary: true' -H 'x-canary-token: demo-force-token' 127.0.0.1:$listener_port/chat
  curl -s 127.0.0.1:$admin_port/stats/prometheus | grep '^policy_canary_tasks'

TXT
if [ -n "${DEMO_EXIT:-}" ]; then
  status=0
  "$canaryctl" rollout watch || status=$?
  exit "$status"
fi
"$canaryctl" rollout watch || true
echo
echo "The rollout is over; the dashboard and Envoy stay up. Ctrl-C stops everything."
wait
