#!/usr/bin/env bash
# TLS handshake comparison: sluice vs NGINX terminating TLS in front of one nginx upstream.
# Same method as benches/load/compare.sh: the proxy pinned to core 0 with one worker; the load
# generator (benches/tls_handshake.rs, one thread) and the upstream pinned to core 1; interleaved
# rounds; medians; proxy CPU time from /proc/PID/stat (utime+stime) per completed handshake.
#
# Every client connection is new: TCP connect, TLS handshake, one GET with Connection: close, the
# whole response, close. Modes: full (client resumption disabled) and resumed (client keeps its
# tickets, so almost every handshake resumes). Certificates: ECDSA P-256 CA and leaf, made here
# with openssl; both proxies serve the same leaf (no chain) and the same upstream.
#
# Environment:
#   DURATION     seconds per measured client run (default 10)
#   ROUNDS       interleaved rounds (default 3)
#   WARMUP       seconds of warm-up per proxy and TLS version before the rounds (default 2)
#   CONCURRENCY  client connections in flight (default 32)
#   TLS_VERSIONS TLS versions to measure, space-separated (default "1.3 1.2")
#   MODES        modes to measure, space-separated (default "full resumed")
#   OUT          also write the markdown table to this file
#   KEEP_TMP     1 = keep the temp dir (certificates, configs, logs, raw client output)
#   CARGO_TARGET_DIR  honoured for the builds (sluice: $CARGO_TARGET_DIR/release/sluice)
#   SKIP_BUILD   1 = do not run cargo (binaries must already exist; the newest
#                $CARGO_TARGET_DIR/release/deps/tls_handshake-* is the client)
#   SLUICE_BIN   path to the sluice binary to test (default $CARGO_TARGET_DIR/release/sluice);
#                when set, sluice is not built
#   PGO          1 = test the profile-guided build (benches/pgo.sh, about ten minutes; then
#                $CARGO_TARGET_DIR/pgo/release/sluice) instead of the plain release build
#   CLIENT_BIN   path to the tls_handshake bench binary; when set, it is not built
set -euo pipefail

BENCH_NAME=tls-compare # log prefix [tls-compare], temp dir /tmp/sluice-tls-compare.XXXXXX
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-32}
TLS_VERSIONS=${TLS_VERSIONS:-1.3 1.2}
MODES=${MODES:-full resumed}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
SLUICE_BIN=${SLUICE_BIN:-}
CLIENT_BIN=${CLIENT_BIN:-}
PROXY_CORE=0
LOAD_CORE=1
SNI=bench.sluice.test

check_rounds_duration
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (seconds)"
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || die "CONCURRENCY must be a positive integer"
read -r -a VERSIONS <<<"$TLS_VERSIONS"
read -r -a MODE_LIST <<<"$MODES"
((${#VERSIONS[@]})) || die "TLS_VERSIONS is empty"
((${#MODE_LIST[@]})) || die "MODES is empty"
for v in "${VERSIONS[@]}"; do [[ $v == 1.3 || $v == 1.2 ]] || die "TLS_VERSIONS: '$v' is not 1.3 or 1.2"; done
for m in "${MODE_LIST[@]}"; do [[ $m == full || $m == resumed ]] || die "MODES: '$m' is not full or resumed"; done
check_bin SLUICE_BIN
check_bin CLIENT_BIN

# ---------------------------------------------------------------- cleanup (benches/lib.sh)
bench_start

# ---------------------------------------------------------------- tools
check_tools nginx openssl curl taskset:util-linux
NGINX_SSL=$(nginx -V 2>&1 | sed -n 's/^.*running with \([^)]*\)).*$/\1/p' | head -n1)
[[ -n "$NGINX_SSL" ]] || NGINX_SSL=$(nginx -V 2>&1 | sed -n 's/^built with //p' | head -n1)
RUSTLS_VERSION=$(awk '/^name = "rustls"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$REPO/Cargo.lock" 2>/dev/null || true)
log "nginx: $NGINX_VERSION ($NGINX_SSL), rustls: ${RUSTLS_VERSION:-?}"
check_cpus

# ---------------------------------------------------------------- build
build_sluice

# the client: the bench target's executable, as cargo reports it
if [[ -n "$CLIENT_BIN" ]]; then
    CLIENT=$CLIENT_BIN
elif [[ "${SKIP_BUILD:-0}" == 1 ]]; then
    # the newest executable cargo left there
    CLIENT=""
    for f in "$TARGET"/release/deps/tls_handshake-*; do
        [[ -f "$f" && -x "$f" && $f != *.d ]] || continue
        if [[ -z "$CLIENT" || "$f" -nt "$CLIENT" ]]; then CLIENT=$f; fi
    done
else
    log "cargo bench --bench tls_handshake --no-run (the client)"
    CLIENT=$(cd "$REPO" || exit 1
        CARGO_TARGET_DIR=$TARGET cargo bench --bench tls_handshake --no-run \
            --message-format=json-render-diagnostics 2>"$TMP/client-build.log" \
            | grep '"name":"tls_handshake"' | grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4 || true)
fi
[[ -n "$CLIENT" && -x "$CLIENT" ]] || die "no tls_handshake client binary (CLIENT=${CLIENT:-none}); see $TMP/client-build.log"
log "client: $CLIENT"

# ---------------------------------------------------------------- helpers
# field KEY FILE: value of KEY=... on the client's result line
field() {
    awk -v k="$1" '/^handshakes=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) { print kv[2]; exit } } }' "$2"
}

# ---------------------------------------------------------------- certificates
CERTS=$TMP/certs
mkdir -p "$CERTS"
CA=$CERTS/ca.pem
LEAF=$CERTS/leaf.pem
LEAF_KEY=$CERTS/leaf.key
(
    cd "$CERTS"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=sluice TLS bench CA" -out ca.pem \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key
    openssl req -new -key leaf.key -subj "/CN=$SNI" -out leaf.csr
    cat >leaf.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$SNI
EOF
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 2 \
        -extfile leaf.ext -out leaf.pem
) >"$TMP/openssl.log" 2>&1 || die "openssl failed: $(tail -n 3 "$TMP/openssl.log")"
log "ECDSA P-256 CA and leaf for $SNI in $CERTS"
CURL_TLS=(--cacert "$CA")

# ---------------------------------------------------------------- upstream
free_port; UP=$PORT
start_upstream upstream "$UP" up

# ---------------------------------------------------------------- proxies
free_port; NGINX_PORT=$PORT
free_port; SLUICE_PORT=$PORT

start_nginx_proxy() {
    local dir=$TMP/nginx-proxy
    write_nginx_proxy_conf "$dir" "127.0.0.1:$NGINX_PORT ssl" "        server 127.0.0.1:$UP;" "\
        server_name $SNI;
        ssl_certificate $LEAF;
        ssl_certificate_key $LEAF_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;"
    start_nginx "nginx proxy" "$dir" "$PROXY_CORE" "https://$SNI:$NGINX_PORT/" \
        "${CURL_TLS[@]}" --resolve "$SNI:$NGINX_PORT:127.0.0.1"
    NGINX_PID=$STARTED_PID
    log "nginx TLS proxy on 127.0.0.1:$NGINX_PORT (pid $NGINX_PID, core $PROXY_CORE)"
}

start_sluice() {
    local cfg=$TMP/sluice.yaml
    cat >"$cfg" <<EOF
workers: 1
listeners:
  - { name: tls, address: 127.0.0.1:$SLUICE_PORT, tls: { certificates: [{ cert: $LEAF, key: $LEAF_KEY }] } }
services:
  - name: app
    versions: { blue: { endpoints: [127.0.0.1:$UP] } }
    routing: { weights: { blue: 1 } }
EOF
    spawn_sluice sluice "$SLUICE" "$cfg" sluice "https://$SNI:$SLUICE_PORT/" \
        "${CURL_TLS[@]}" --resolve "$SNI:$SLUICE_PORT:127.0.0.1"
    SLUICE_PID=$STARTED_PID
    grep -q 'listening with TLS' "$TMP/sluice.log" || log "WARNING: no 'listening with TLS' line in sluice's log"
    log "sluice TLS listener on 127.0.0.1:$SLUICE_PORT (pid $SLUICE_PID, core $PROXY_CORE, $SLUICE)"
}

start_nginx_proxy
start_sluice

# ---------------------------------------------------------------- load
# results per KEY = "proxy|version|mode", one value per round, space-separated
declare -A RATE=() CPU=() BUSY=() CLIENT_CPU=() RESUMED=() P50=() P99=() FAIL=() HS=()
RUN_NO=0

# run_client PROXY VERSION MODE DURATION: one client run; sets LAST_* (CPU figures from the proxy tree)
run_client() {
    local proxy=$1 version=$2 mode=$3 dur=$4 port pid out err hs secs
    case $proxy in
        nginx) port=$NGINX_PORT pid=$NGINX_PID ;;
        sluice) port=$SLUICE_PORT pid=$SLUICE_PID ;;
    esac
    RUN_NO=$((RUN_NO + 1))
    out=$TMP/client.$RUN_NO.$proxy.$version.$mode.txt
    err=${out%.txt}.err
    cpu_begin "$pid" "$proxy"
    # in the background + wait, so that a signal interrupts the wait and the trap runs at once
    TLS_BENCH_ADDR=127.0.0.1:$port TLS_BENCH_CA=$CA TLS_BENCH_SNI=$SNI TLS_BENCH_MODE=$mode \
        TLS_BENCH_TLS=$version TLS_BENCH_CONCURRENCY=$CONCURRENCY TLS_BENCH_SECONDS=$dur \
        taskset -c "$LOAD_CORE" "$CLIENT" --bench >"$out" 2>"$err" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || die "client failed against $proxy (TLS $version, $mode): $(tail -n 3 "$err")"
    LOADGEN_PID=""
    cpu_end "$pid" "$proxy" "$proxy"
    hs=$(field handshakes "$out")
    secs=$(field seconds "$out")
    [[ -n "$hs" && -n "$secs" ]] || die "cannot parse client output for $proxy: $out"
    LAST_HS=$hs
    LAST_RATE=$(awk -v r="$(field rate "$out")" 'BEGIN { printf "%.0f", r }')
    LAST_FAIL=$(field failures "$out")
    LAST_P50=$(field p50_ms "$out")
    LAST_P99=$(field p99_ms "$out")
    LAST_RESUMED=$(awk -v k="$(field resumed "$out")" -v n="$hs" 'BEGIN { if (n > 0) printf "%.1f", k / n * 100; else print "?" }')
    LAST_CPU=$(cpu_us_per "$CPU_DELTA" "$hs")
    LAST_BUSY=$(awk -v d="$CPU_DELTA" -v hz="$CLK_TCK" -v s="$secs" \
        'BEGIN { if (s > 0) printf "%.0f", d / hz / s * 100; else print "?" }')
    LAST_CLIENT_CPU=$(awk -v c="$(field client_cpu_s "$out")" -v s="$secs" \
        'BEGIN { if (c ~ /^[0-9.]+$/ && s > 0) printf "%.0f", c / s * 100; else print "?" }')
    if [[ "$LAST_FAIL" != 0 ]]; then
        log "WARNING: $proxy TLS $version $mode: $LAST_FAIL failed connections:"
        sed 's/^/    /' "$err" | head -n 5 >&2
    fi
}

record() { # KEY
    local k=$1
    RATE[$k]+="$LAST_RATE "
    CPU[$k]+="$LAST_CPU "
    BUSY[$k]+="$LAST_BUSY "
    CLIENT_CPU[$k]+="$LAST_CLIENT_CPU "
    RESUMED[$k]+="$LAST_RESUMED "
    P50[$k]+="$LAST_P50 "
    P99[$k]+="$LAST_P99 "
    FAIL[$k]+="$LAST_FAIL "
    HS[$k]+="$LAST_HS "
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
PROXIES=(nginx sluice)
if ((WARMUP > 0)); then
    log "warm-up: ${WARMUP}s per proxy, TLS version and mode"
    for v in "${VERSIONS[@]}"; do
        for m in "${MODE_LIST[@]}"; do
            for p in "${PROXIES[@]}"; do run_client "$p" "$v" "$m" "$WARMUP"; done
        done
    done
fi

for r in $(seq 1 "$ROUNDS"); do
    for v in "${VERSIONS[@]}"; do
        for m in "${MODE_LIST[@]}"; do
            for p in "${PROXIES[@]}"; do
                run_client "$p" "$v" "$m" "$DURATION"
                record "$p|$v|$m"
                log "round $r/$ROUNDS $p TLS $v $m: $LAST_RATE handshakes/s, $LAST_CPU CPU us/handshake (proxy core ${LAST_BUSY}% busy, client ${LAST_CLIENT_CPU}%), resumed $LAST_RESUMED%, p99 $LAST_P99 ms, failures $LAST_FAIL"
            done
        done
    done
done

LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck disable=SC2046
NGINX_RSS=$(hwm_kb $(proc_tree "$NGINX_PID"))
SLUICE_RSS=$(hwm_kb "$SLUICE_PID")
SLUICE_WARN=$(count_warn "$TMP/sluice.log")
NGINX_ERR=$(grep -ciE '\[(error|crit|alert|emerg)\]' "$TMP/nginx-proxy/logs/error.log" || true)

# ---------------------------------------------------------------- report
sum() { awk '{ for (i = 1; i <= NF; i++) s += $i } END { print s + 0 }' <<<"$*"; }
fmt_rounds() { # KEY
    local k=$1 rate cpu out="" i
    read -r -a rate <<<"${RATE[$k]}"
    read -r -a cpu <<<"${CPU[$k]}"
    for i in "${!rate[@]}"; do
        [[ -n "$out" ]] && out+=", "
        out+="${rate[$i]} / ${cpu[$i]}"
    done
    echo "$out"
}
row() { # PROXY VERSION MODE
    local k="$1|$2|$3" name
    case $1 in nginx) name="NGINX" ;; sluice) name="sluice" ;; esac
    # shellcheck disable=SC2086
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |\n' "$name" "$2" "$3" \
        "$(median ${RATE[$k]})" "$(median ${CPU[$k]})" "$(median ${BUSY[$k]})" "$(median ${CLIENT_CPU[$k]})" \
        "$(median ${RESUMED[$k]})" "$(median ${P50[$k]})" "$(median ${P99[$k]})" "$(sum ${FAIL[$k]})" \
        "$(fmt_rounds "$k")"
}

TABLE=$(
    echo "### TLS handshakes: sluice vs NGINX (new connection per request)"
    echo
    echo "benches/tls_handshake.rs client (rustls ${RUSTLS_VERSION:-?}, one thread, $CONCURRENCY connections in flight): connect, handshake, GET / with Connection: close, read to the end, close."
    echo "ECDSA P-256 leaf, no chain; ${DURATION}s per run, $ROUNDS interleaved round(s), medians; proxy on core $PROXY_CORE (one worker), client + nginx upstream on core $LOAD_CORE."
    echo "nginx $NGINX_VERSION ($NGINX_SSL), sluice $SLUICE_REV, $(date -u +%Y-%m-%dT%H:%MZ), CLK_TCK=$CLK_TCK."
    echo
    echo "| proxy | TLS | mode | handshakes/s | server CPU µs/handshake | proxy core busy % | client CPU % | resumed % | p50 / p99 ms | failures | rounds (hs/s / µs) |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for v in "${VERSIONS[@]}"; do
        for m in "${MODE_LIST[@]}"; do
            for p in "${PROXIES[@]}"; do row "$p" "$v" "$m"; done
        done
    done
    echo
    echo "Server CPU µs/handshake: utime+stime of the proxy's processes over the run ÷ completed connections (each one handshake and one proxied request). Proxy core busy: that CPU time ÷ wall time; well under 100% means the client (sharing core $LOAD_CORE with the upstream) was the bottleneck, so compare CPU µs/handshake rather than handshakes/s."
    echo "Load average (1/5/15 min) before the warm-up: $LOADAVG_START, after the rounds: $LOADAVG_END (about 2 expected: the proxy and the client each keep a core busy; more means something else ran)."
    echo "Peak RSS: NGINX $(kb_to_mb "$NGINX_RSS") MB (master + worker), sluice $(kb_to_mb "$SLUICE_RSS") MB. Log lines: sluice WARN/ERROR $SLUICE_WARN, NGINX error/crit $NGINX_ERR."
)

print_table "$TABLE"
show_warn sluice "$TMP/sluice.log" "$SLUICE_WARN"
