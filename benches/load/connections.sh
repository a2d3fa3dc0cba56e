#!/usr/bin/env bash
# Memory under many idle connections and an overload burst: RSS of the sluice process (release
# binary), on 127.0.0.1 only. A measurement, not a test: it prints numbers and checks nothing.
#
#   benches/load/connections.sh                   # builds target/release/sluice first
#   SKIP_BUILD=1 benches/load/connections.sh      # or SLUICE_BIN=/path/to/sluice
#   IDLE=10000 BURST_CONNS=2000 BURST_SECONDS=10 MAX_CONNECTIONS=11500 MAX_IN_FLIGHT=1000 \
#     UPSTREAM_DELAY_MS=20 benches/load/connections.sh
#
# Phases: (1) sluice started, one request served; (2) IDLE keep-alive connections, each after one
# request, held open (the config sets `request_headers: 5m`, else the 10 s default closes idle
# keep-alive connections); (3) while they are held, BURST_CONNS more connections send requests
# back to back for BURST_SECONDS to an upstream that answers after UPSTREAM_DELAY_MS, so more
# requests want to be in flight than MAX_IN_FLIGHT (shed: 503) and more connections than
# MAX_CONNECTIONS (closed at accept); RSS is sampled every 0.25 s; (4) after the burst; (5) after
# the idle connections closed. The clients and the upstream are benches/load/connections.py
# (asyncio, one process each). `ulimit -n` is raised to the hard limit (needs IDLE + BURST_CONNS
# + min(MAX_IN_FLIGHT, BURST_CONNS) + some below it).
#
# Measured 2026-11-22 on a 2-core VM (shared with other work), branch harden, release build,
# workers: default (one per core = 2), with the defaults above (IDLE=10000 BURST_CONNS=2000
# BURST_SECONDS=10 MAX_CONNECTIONS=11500 MAX_IN_FLIGHT=1000 UPSTREAM_DELAY_MS=20); RSS of three
# runs (the open count during the burst was sampled in the third only):
#   started, one request served            7.4 /   7.6 /   7.6 MiB
#   10000 idle keep-alive connections    257.3 / 257.6 / 257.1 MiB  (about 25 KiB each)
#   during the burst: peak               322.6 / 321.4 / 315.2 MiB  (third run: open at most
#                                                                    11500, in flight 995)
#   after the burst, and after the idle  322.6 / 321.4 / 315.2 MiB  (freed memory stays with
#   connections closed                                              glibc's malloc)
#   burst answers 200: 52063 / 38297 / 32895; shed 503: 7735 / 5245 / 6193; connections closed
#   at accept: 9057 / 7171 / 6366 (the burst client reconnects at once after each)
# Without the limits in the way (MAX_CONNECTIONS=13000 MAX_IN_FLIGHT=100000), one run: idle
# 257.6 MiB; burst peak 354.4 MiB with all 2000 burst requests in flight; 27683 answers, all 200.
set -euo pipefail

BENCH_NAME=connections
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

IDLE=${IDLE:-10000}
BURST_CONNS=${BURST_CONNS:-2000}
BURST_SECONDS=${BURST_SECONDS:-10}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-11500}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-1000}
UPSTREAM_DELAY_MS=${UPSTREAM_DELAY_MS:-20}
KEEP_TMP=${KEEP_TMP:-0}
SLUICE_BIN=${SLUICE_BIN:-}
for v in IDLE BURST_CONNS BURST_SECONDS MAX_CONNECTIONS MAX_IN_FLIGHT UPSTREAM_DELAY_MS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
check_bin SLUICE_BIN
command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"

ulimit -n "$(ulimit -Hn)"
# sluice holds at most every client connection and one upstream connection per request in flight
need=$((IDLE + BURST_CONNS + (MAX_IN_FLIGHT < BURST_CONNS ? MAX_IN_FLIGHT : BURST_CONNS) + 256))
(($(ulimit -n) >= need)) || die "ulimit -n is $(ulimit -n); $need are needed: lower IDLE or raise the hard limit"

build_sluice
bench_start
CLIENT="python3 $REPO/benches/load/connections.py"

free_port; UP_PORT=$PORT
free_port; PROXY_PORT=$PORT
free_port; ADMIN_PORT=$PORT
cat >"$TMP/sluice.yaml" <<EOF
listeners: [{ name: bench, address: 127.0.0.1:$PROXY_PORT }]
admin: { address: 127.0.0.1:$ADMIN_PORT }
defaults:
  timeouts: { request_headers: 5m }
  limits: { max_connections: $MAX_CONNECTIONS, max_in_flight: $MAX_IN_FLIGHT }
services:
  - name: bench
    versions: { v: { endpoints: [127.0.0.1:$UP_PORT] } }
    routing: { weights: { v: 1 } }
EOF

$CLIENT upstream "$UP_PORT" "$UPSTREAM_DELAY_MS" >"$TMP/upstream.log" 2>&1 &
STARTED_PIDS+=($!)
RUST_LOG=warn "$SLUICE" run -c "$TMP/sluice.yaml" >"$TMP/sluice.log" 2>&1 &
SLUICE_PID=$!
STARTED_PIDS+=("$SLUICE_PID")
wait_ready sluice "$SLUICE_PID" "http://127.0.0.1:$PROXY_PORT/" "$TMP/sluice.log"

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$SLUICE_PID/status"; }
metric() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%7.1f MiB", k / 1024 }'; }
# report LABEL KIB: one line of the result, with the proxy's counters as they are now
report() { printf '%-36s RSS %s  open=%s in_flight=%s refused=%s shed=%s\n' "$1" "$(mib "$2")" \
    "$(metric sluice_connections_open)" "$(metric sluice_requests_in_flight)" \
    "$(metric sluice_connections_refused_total)" "$(metric sluice_requests_shed_total)"; }
# wait_for FILE PATTERN SECONDS: until a line of FILE matches
wait_for() {
    local i
    for i in $(seq 1 $(($3 * 10))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "no \"$2\" in $1 within $3 s"
}

report "started, one request served" "$(rss_kib)"

mkfifo "$TMP/idle.in"
$CLIENT idle "127.0.0.1:$PROXY_PORT" "$IDLE" <"$TMP/idle.in" >"$TMP/idle.out" 2>&1 &
STARTED_PIDS+=($!)
exec 3>"$TMP/idle.in"
wait_for "$TMP/idle.out" '^ready' 300
log "idle client: $(cat "$TMP/idle.out")"
report "$IDLE idle keep-alive connections" "$(rss_kib)"

$CLIENT burst "127.0.0.1:$PROXY_PORT" "$BURST_CONNS" "$BURST_SECONDS" >"$TMP/burst.out" 2>&1 &
LOADGEN_PID=$!
peak=0 samples=0 peak_in_flight=0 peak_open=0
while kill -0 "$LOADGEN_PID" 2>/dev/null; do
    rss=$(rss_kib)
    ((rss > peak)) && peak=$rss
    in_flight=$(metric sluice_requests_in_flight)
    ((in_flight > peak_in_flight)) && peak_in_flight=$in_flight
    open=$(metric sluice_connections_open)
    ((open > peak_open)) && peak_open=$open
    samples=$((samples + 1))
    sleep 0.25
done
wait "$LOADGEN_PID" || die "burst client failed: $(cat "$TMP/burst.out")"
LOADGEN_PID=""
log "burst client ($BURST_CONNS connections, ${BURST_SECONDS}s): $(cat "$TMP/burst.out")"
printf '%-36s RSS %s  (%d samples; most seen: open=%s in_flight=%s)\n' "during the burst: peak" \
    "$(mib "$peak")" "$samples" "$peak_open" "$peak_in_flight"
report "after the burst" "$(rss_kib)"

exec 3>&-
for i in $(seq 1 300); do
    [[ "$(metric sluice_connections_open)" == 0 ]] && break
    sleep 0.1
done
report "idle connections closed" "$(rss_kib)"
printf 'VmHWM (peak RSS of the process): %.1f MiB\n' \
    "$(awk '/^VmHWM:/ { print $2 / 1024 }' "/proc/$SLUICE_PID/status")"
