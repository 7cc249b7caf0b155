#!/usr/bin/env bash
# The demo, in two parts.
# 1. One way: starts NATS (JetStream), Redis and the mock CRM on their own
#    ports, runs `syncflow run` on the shipped pipelines, publishes sample CDC
#    events and prints what reached each CRM and what was dead-lettered.
# 2. Two ways: a fresh NATS and Redis, the System A stand-in (every write a
#    CDC event), the mock CRM sending signed HubSpot webhooks to syncflow and
#    serving Salesforce's changes for polling, and `syncflow run` on
#    examples/two-way; edits made as users make them on either side, and
#    what each side holds after each.
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
  if [ $status -ne 0 ]; then
    for log in "$work/syncflow.log" "$work/syncflow-two-way.log"; do
      [ -f "$log" ] && { echo "== $log (last 40 lines)"; tail -n 40 "$log"; }
    done
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building"
cargo build --quiet --bin syncflow --bin mock-crm --bin system-a \
  --example demo_events --example demo_two_way

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
export NATS_URL="$nats" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  HUBSPOT_URL="http://127.0.0.1:$CRM_PORT/hubspot" SALESFORCE_URL="http://127.0.0.1:$CRM_PORT/salesforce" \
  SYNCFLOW_HTTP="127.0.0.1:$HTTP_PORT"
target/debug/syncflow run --dir . >"$work/syncflow.log" 2>&1 &
syncflow_pid=$!
pids+=($syncflow_pid)

target/debug/examples/demo_events --nats "$nats" wait --timeout-secs 180
echo "== metrics (excerpt)"
curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null | grep -E '^syncflow_pipeline_(sent|dead_letters|skipped)' | sort || true
target/debug/examples/demo_events --nats "$nats" summary --crm "http://127.0.0.1:$CRM_PORT"

echo "== dead letters: syncflow dlq list"
target/debug/syncflow dlq list --dir .
echo "== what replaying them would do with the config as it is: syncflow dlq replay --all --dry-run"
target/debug/syncflow dlq replay --all --dry-run --dir . || true
echo "== status page: http://127.0.0.1:$HTTP_PORT/"
mkdir -p target
if chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --virtual-time-budget=5000 --window-size=1280,900 \
  --screenshot="$PWD/target/demo-status-page.png" "http://127.0.0.1:$HTTP_PORT/" >"$work/chromium.log" 2>&1; then
  echo "screenshot: target/demo-status-page.png"
else
  echo "no screenshot (chromium failed: $work/chromium.log)"
fi

echo "== stopping syncflow (SIGTERM: drains, exits 0)"
kill -TERM "$syncflow_pid"
wait "$syncflow_pid" && echo "syncflow exited 0"

echo
echo "== part 2: two-way sync (examples/two-way)"
NATS2_PORT=${NATS2_PORT:-14223}
REDIS2_PORT=${REDIS2_PORT:-16380}
CRM2_PORT=${CRM2_PORT:-18081}
SYSTEM_A_PORT=${SYSTEM_A_PORT:-18090}
HTTP2_PORT=${HTTP2_PORT:-19465}
APP_SECRET=demo-app-secret
echo "== starting nats-server :$NATS2_PORT, redis-server :$REDIS2_PORT, System A :$SYSTEM_A_PORT, mock CRM :$CRM2_PORT (webhooks to syncflow :$HTTP2_PORT)"
nats-server -js -a 127.0.0.1 -p "$NATS2_PORT" -sd "$work/nats2" >"$work/nats2.log" 2>&1 &
pids+=($!)
redis-server --port "$REDIS2_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis2.log" 2>&1 &
pids+=($!)
wait_for_port "$NATS2_PORT"; wait_for_port "$REDIS2_PORT"
nats2="nats://127.0.0.1:$NATS2_PORT"
target/debug/system-a --listen "127.0.0.1:$SYSTEM_A_PORT" --nats-url "$nats2" --token dev-token >"$work/system-a.log" 2>&1 &
pids+=($!)
# HubSpot's webhooks as HubSpot sends them: batched, signed, and every
# change's, syncflow's own included.
target/debug/mock-crm --listen "127.0.0.1:$CRM2_PORT" \
  --hubspot-limit 100/1s:10 --salesforce-limit 100/1s:10 \
  --webhook-url "http://127.0.0.1:$HTTP2_PORT/hooks/hubspot" --webhook-secret "$APP_SECRET" >"$work/crm2.log" 2>&1 &
pids+=($!)
wait_for_port "$SYSTEM_A_PORT"; wait_for_port "$CRM2_PORT"

target/debug/syncflow validate --dir examples/two-way
echo "== syncflow run --dir examples/two-way (log: $work/syncflow-two-way.log)"
NATS_URL="$nats2" REDIS_URL="redis://127.0.0.1:$REDIS2_PORT" \
  HUBSPOT_URL="http://127.0.0.1:$CRM2_PORT/hubspot" SALESFORCE_URL="http://127.0.0.1:$CRM2_PORT/salesforce" \
  SYSTEM_A_URL="http://127.0.0.1:$SYSTEM_A_PORT" HUBSPOT_APP_SECRET="$APP_SECRET" \
  SYNCFLOW_HTTP="127.0.0.1:$HTTP2_PORT" \
  target/debug/syncflow run --dir examples/two-way >"$work/syncflow-two-way.log" 2>&1 &
syncflow2_pid=$!
pids+=($syncflow2_pid)
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$HTTP2_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

target/debug/examples/demo_two_way --system-a "http://127.0.0.1:$SYSTEM_A_PORT" \
  --crm "http://127.0.0.1:$CRM2_PORT" --syncflow "http://127.0.0.1:$HTTP2_PORT"
kill -TERM "$syncflow2_pid"
wait "$syncflow2_pid" && echo "syncflow (two-way) exited 0"
