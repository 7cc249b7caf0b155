#!/usr/bin/env bash
# The demo: starts NATS (JetStream), Redis and the mock CRM on their own
# ports, runs `syncflow run` on the shipped pipelines, publishes sample CDC
# events and prints what reached each CRM and what was dead-lettered.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_services_installed

NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
CRM_PORT=${CRM_PORT:-18080}
HTTP_PORT=${HTTP_PORT:-19464}
work=$(mktemp -d)
pids=()
cleanup() {
  status=$?
  if [ $status -ne 0 ] && [ -f "$work/syncflow.log" ]; then
    echo "== syncflow log (last 40 lines)"; tail -n 40 "$work/syncflow.log"
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building"
cargo build --quiet --bin syncflow --bin mock-crm --example demo_events

echo "== starting nats-server (JetStream) :$NATS_PORT, redis-server :$REDIS_PORT, mock CRM :$CRM_PORT"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
# The CRMs' own limits match the providers' (HubSpot 100/10s, Salesforce 25/s);
# 5% of requests fail with 503 to show retries.
target/debug/mock-crm --listen "127.0.0.1:$CRM_PORT" \
  --hubspot-limit 100/10s:10 --salesforce-limit 25/1s:5 --fail-rate 0.05 >"$work/crm.log" 2>&1 &
pids+=($!)
wait_for_port "$NATS_PORT"; wait_for_port "$REDIS_PORT"; wait_for_port "$CRM_PORT"

nats="nats://127.0.0.1:$NATS_PORT"
target/debug/examples/demo_events --nats "$nats" publish

echo "== syncflow run (log: $work/syncflow.log)"
NATS_URL="$nats" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  HUBSPOT_URL="http://127.0.0.1:$CRM_PORT/hubspot" SALESFORCE_URL="http://127.0.0.1:$CRM_PORT/salesforce" \
  SYNCFLOW_HTTP="127.0.0.1:$HTTP_PORT" \
  target/debug/syncflow run --dir . >"$work/syncflow.log" 2>&1 &
syncflow_pid=$!
pids+=($syncflow_pid)

target/debug/examples/demo_events --nats "$nats" wait --timeout-secs 180
echo "== metrics (excerpt)"
curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null | grep -E '^syncflow_pipeline_(sent|dead_letters|skipped)' | sort || true
target/debug/examples/demo_events --nats "$nats" summary --crm "http://127.0.0.1:$CRM_PORT"

echo "== stopping syncflow (SIGTERM: drains, exits 0)"
kill -TERM "$syncflow_pid"
wait "$syncflow_pid" && echo "syncflow exited 0"
