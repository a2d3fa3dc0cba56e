#!/usr/bin/env bash
# Load comparison: sluice vs NGINX vs HAProxy as reverse proxies, and a direct connection to the
# upstream as the reference, in up to four scenarios (single, weighted, mirror, h2), optionally with a
# second sluice binary (A/B) measured in the same run. See benches/load/README.md.
# Method: shared/BASELINE.md (proxy pinned to core 0 with one worker; the load generators and the
# upstreams pinned to core 1; interleaved rounds; medians; CPU time per request from /proc/PID/stat).
#
# Every proxy instance of every scenario is started up front (idle ones cost nothing measurable), then
# each round runs every scenario, and in each scenario every target (direct, NGINX, HAProxy, sluice,
# sluice B) in an order rotated by one per round. Per target and round: a closed-loop run (wrk, or
# h2load for h2) for req/s and proxy CPU µs per request, then an open-loop run at a fixed rate
# (benches/openloop.rs) for latency p50/p99/p99.9 (from each request's intended start: coordinated
# omission corrected), also shown as "added over direct" (the proxy's percentile minus the direct
# connection's, same round and scenario).
#
# Environment:
#   SCENARIOS  space-separated, from: single weighted mirror h2 (default: all four)
#   SCENARIO   the old single-scenario knob; used when SCENARIOS is unset
#   PROXIES    space-separated, from: nginx haproxy sluice (default: all three; direct always runs)
#   DURATION   seconds per closed-loop run (default 10)
#   ROUNDS     interleaved rounds (default 3)
#   WARMUP     seconds of closed-loop warm-up per target before the rounds (default 2; 0 = none)
#   CONNS      wrk connections, and open-loop connections for HTTP/1.1 (default 64)
#   H2_CONNS   h2load clients (connections) for h2, also open-loop h2c connections (default CONNS)
#   H2_STREAMS h2load max concurrent streams per connection (-m), also open-loop h2c (default 10)
#   RATE       open-loop rate in requests/s (default 5000); 0 = no open-loop runs (no latency columns)
#   RATE_DURATION  seconds per open-loop run (default DURATION)
#   RATE_WARMUP    seconds at RATE before each open-loop run's measured window (default 1)
#   OUT        also write the report (tables and raw rounds) to this file
#   KEEP_TMP   1 = keep the temp dir (configs, logs, raw load generator output)
#   CARGO_TARGET_DIR  honoured for the builds (binary: $CARGO_TARGET_DIR/release/sluice)
#   SKIP_BUILD 1 = do not run cargo (binaries must already exist; the newest
#              $CARGO_TARGET_DIR/release/deps/openloop-* is the open-loop client)
#   SLUICE_BIN      path to the sluice binary to test (default $CARGO_TARGET_DIR/release/sluice);
#                   when set, sluice is not built
#   PGO             1 = test the profile-guided build (benches/pgo.sh, about ten minutes; then
#                   $CARGO_TARGET_DIR/pgo/release/sluice) instead of the plain release build
#   SLUICE_B_BIN    path to a second sluice binary (A/B): started with the same configs on their own
#                   ports on the same core, measured in every round, one more row per table
#   SLUICE_B_LABEL  name of that second binary in the report (default "sluice B")
#   OPENLOOP_BIN    path to the open-loop client (the openloop bench binary); when set, it is not built
#   NGINX_KEEPALIVE NGINX's upstream `keepalive` (idle connections it caches) in every scenario; default
#                   64, and in h2 H2_CONNS x H2_STREAMS (what can be in flight) when that is more
#   MIRROR_PERCENT          sluice's mirror percent (0..100): in the mirror scenario (default there 100),
#                           and in the other scenarios a mirror to the shadow version is added with it
#   SLUICE_B_MIRROR_PERCENT the same for the B instance (needs SLUICE_B_BIN)
set -euo pipefail

BENCH_NAME=compare # log prefix [compare], temp dir /tmp/sluice-compare.XXXXXX
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-$CONNS}
H2_STREAMS=${H2_STREAMS:-10}
RATE=${RATE:-5000}
RATE_DURATION=${RATE_DURATION:-$DURATION}
RATE_WARMUP=${RATE_WARMUP:-1}
SCENARIOS=${SCENARIOS:-${SCENARIO:-single weighted mirror h2}}
PROXIES=${PROXIES:-nginx haproxy sluice}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
SLUICE_BIN=${SLUICE_BIN:-}
SLUICE_B_BIN=${SLUICE_B_BIN:-}
SLUICE_B_LABEL=${SLUICE_B_LABEL:-sluice B}
OPENLOOP_BIN=${OPENLOOP_BIN:-}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-}
MIRROR_PERCENT=${MIRROR_PERCENT:-}
SLUICE_B_MIRROR_PERCENT=${SLUICE_B_MIRROR_PERCENT:-}
PROXY_CORE=0
LOAD_CORE=1

# ---------------------------------------------------------------- arguments
check_rounds_duration
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_num() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
is_uint "$WARMUP" || die "WARMUP must be a non-negative integer (seconds)"
for v in CONNS H2_CONNS H2_STREAMS RATE_DURATION; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[[ -z "$NGINX_KEEPALIVE" || "$NGINX_KEEPALIVE" =~ ^[1-9][0-9]*$ ]] || die "NGINX_KEEPALIVE must be a positive integer"
# NGINX's idle upstream connection cache must hold what can be in flight, or NGINX closes and reopens
# upstream connections all the time: 64 for CONNS <= 64 over HTTP/1.1, H2_CONNS x H2_STREAMS for h2
nginx_keepalive() { # SCENARIO
    local n=64
    if [[ $1 == h2 ]]; then ((H2_CONNS * H2_STREAMS > n)) && n=$((H2_CONNS * H2_STREAMS)); fi
    echo "${NGINX_KEEPALIVE:-$n}"
}
is_num "$RATE" || die "RATE must be a non-negative number (requests/s; 0 = no open-loop runs)"
is_num "$RATE_WARMUP" || die "RATE_WARMUP must be a non-negative number (seconds)"
OPEN=1
awk -v r="$RATE" 'BEGIN { exit !(r > 0) }' || OPEN=0

read -r -a SCENARIO_LIST <<<"$SCENARIOS"
((${#SCENARIO_LIST[@]})) || die "SCENARIOS is empty"
declare -A SEEN=()
for s in "${SCENARIO_LIST[@]}"; do
    case $s in single|weighted|mirror|h2) ;; *) die "SCENARIOS: '$s' is not single, weighted, mirror or h2" ;; esac
    [[ -z "${SEEN[$s]:-}" ]] || die "SCENARIOS: '$s' given twice"
    SEEN[$s]=1
done
read -r -a PROXY_LIST <<<"$PROXIES"
((${#PROXY_LIST[@]})) || die "PROXIES is empty"
SEEN=()
for p in "${PROXY_LIST[@]}"; do
    case $p in nginx|haproxy|sluice) ;; *) die "PROXIES: '$p' is not nginx, haproxy or sluice" ;; esac
    [[ -z "${SEEN[$p]:-}" ]] || die "PROXIES: '$p' given twice"
    SEEN[$p]=1
done
has() { local x=$1; shift; [[ " $* " == *" $x "* ]]; }
check_bin SLUICE_BIN
check_bin SLUICE_B_BIN
check_bin OPENLOOP_BIN
[[ -n "$SLUICE_B_LABEL" ]] || die "SLUICE_B_LABEL must not be empty"
[[ -z "$SLUICE_B_BIN" ]] || has sluice "${PROXY_LIST[@]}" || die "SLUICE_B_BIN needs sluice in PROXIES"
[[ -z "$SLUICE_B_BIN" ]] || PROXY_LIST+=(sluice-b)
check_percent() { # NAME VALUE: empty, or a number 0..100 (decimals allowed, as sluice's percent is a float)
    [[ -z "$2" ]] && return 0
    if ! is_num "$2" || ! awk -v p="$2" 'BEGIN { exit !(p <= 100) }'; then
        die "$1 must be a number from 0 to 100 (got '$2')"
    fi
}
check_percent MIRROR_PERCENT "$MIRROR_PERCENT"
check_percent SLUICE_B_MIRROR_PERCENT "$SLUICE_B_MIRROR_PERCENT"
[[ -z "$SLUICE_B_MIRROR_PERCENT" || -n "$SLUICE_B_BIN" ]] || die "SLUICE_B_MIRROR_PERCENT needs SLUICE_B_BIN"
# a shadow upstream is needed for the mirror scenario, and for mirrors added to the other scenarios
NEED_SHADOW=0
if has mirror "${SCENARIO_LIST[@]}" || [[ -n "$MIRROR_PERCENT$SLUICE_B_MIRROR_PERCENT" ]]; then NEED_SHADOW=1; fi
NEED_H2=0
has h2 "${SCENARIO_LIST[@]}" && NEED_H2=1

# ---------------------------------------------------------------- cleanup (benches/lib.sh)
bench_start
mkdir -p "$TMP/runs"

# ---------------------------------------------------------------- tools
TOOLS=(nginx wrk curl taskset:util-linux)
has haproxy "${PROXY_LIST[@]}" && TOOLS+=(haproxy)
((NEED_H2)) && TOOLS+=(h2load:nghttp2-client)
check_tools "${TOOLS[@]}"
WRK_VERSION=$( (wrk --version 2>&1 || true) | head -n1 | awk '{print $2}')
[[ -n "$WRK_VERSION" ]] || die "wrk --version gave no version"
HAPROXY_VERSION=""
if has haproxy "${PROXY_LIST[@]}"; then
    HAPROXY_VERSION=$(haproxy -v 2>&1 | awk '/^HA-?Proxy version/ {print $3; exit}')
    [[ -n "$HAPROXY_VERSION" ]] || die "haproxy -v gave no version"
fi
H2LOAD_VERSION=""
if ((NEED_H2)); then
    H2LOAD_VERSION=$(h2load --version 2>&1 | awk '{print $2; exit}')
    [[ -n "$H2LOAD_VERSION" ]] || die "h2load --version gave no version"
    curl -V | grep -qw HTTP2 || die "this curl has no HTTP/2 (needed for the h2 readiness checks)"
fi
log "nginx: $NGINX_VERSION, wrk: $WRK_VERSION${HAPROXY_VERSION:+, haproxy: $HAPROXY_VERSION}${H2LOAD_VERSION:+, h2load: $H2LOAD_VERSION}"
check_cpus

# ---------------------------------------------------------------- build
build_sluice
SLUICE_B_REV=""
[[ -n "$SLUICE_B_BIN" ]] && SLUICE_B_REV="$SLUICE_B_BIN (sha256 $(bin_sha "$SLUICE_B_BIN"))"

# the open-loop client: the openloop bench target's executable, as cargo reports it
OPENLOOP=""
if ((OPEN)); then
    if [[ -n "$OPENLOOP_BIN" ]]; then
        OPENLOOP=$OPENLOOP_BIN
    elif [[ "${SKIP_BUILD:-0}" == 1 ]]; then
        # the newest executable cargo left there
        for f in "$TARGET"/release/deps/openloop-*; do
            [[ -f "$f" && -x "$f" && $f != *.d ]] || continue
            if [[ -z "$OPENLOOP" || "$f" -nt "$OPENLOOP" ]]; then OPENLOOP=$f; fi
        done
    else
        log "cargo bench --bench openloop --no-run (the open-loop client)"
        OPENLOOP=$(cd "$REPO" || exit 1
            CARGO_TARGET_DIR=$TARGET cargo bench --bench openloop --no-run \
                --message-format=json-render-diagnostics 2>"$TMP/openloop-build.log" \
                | grep '"name":"openloop"' | grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4 || true)
    fi
    [[ -n "$OPENLOOP" && -x "$OPENLOOP" ]] \
        || die "no openloop client binary (OPENLOOP=${OPENLOOP:-none}); see $TMP/openloop-build.log"
    log "open-loop client: $OPENLOOP"
fi

# ---------------------------------------------------------------- helpers
# latency string from wrk (e.g. 812.00us, 1.23ms, 1.01s, 2.00m) -> milliseconds
to_ms() {
    awk -v s="$1" 'BEGIN {
        if (s == "") { print "?"; exit }
        n = s + 0; u = s; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}

# ofield KEY FILE: value of KEY=... on the open-loop client's result line
ofield() {
    awk -v k="$1" '/^requests=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) { print kv[2]; exit } } }' "$2"
}

# cell FORMAT VALUE...: "median (min–max)" of the numeric values, each printed with FORMAT; one value
# (or all equal): just it; none: ?
cell() {
    local fmt=$1
    shift
    printf '%s\n' "$@" | grep -E '^-?[0-9.]+$' | sort -g | awk -v f="$fmt" '
        { a[NR] = $1 } END {
            if (NR == 0) { print "?"; exit }
            m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
            if (a[1] == a[NR]) { printf f "\n", m; exit }
            printf f " (" f "\342\200\223" f ")\n", m, a[1], a[NR] }'
}

# minus A B: A - B, or ? when either is not a number
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^-?[0-9.]+$/ || b !~ /^-?[0-9.]+$/) print "?"; else printf "%.3f", a - b }'; }

# rel_diff A B: relative difference (A - B) / B in percent, signed with + or U+2212
rel_diff() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) { print "?"; exit }
        d = (a - b) / b * 100
        s = sprintf("%.1f", d < 0 ? -d : d)
        printf "%s%s%%", (d < 0 && s + 0 > 0) ? "\342\210\222" : "+", s }'
}

# ---------------------------------------------------------------- upstreams
free_port; UP1=$PORT
UP1_H2C=""
if ((NEED_H2)); then free_port; UP1_H2C=$PORT; fi
start_upstream up1 "$UP1" "up1" "" "$UP1_H2C"
UP2=""
if has weighted "${SCENARIO_LIST[@]}"; then
    free_port; UP2=$PORT
    start_upstream up2 "$UP2" "up2"
fi
# shadow for mirroring: same as the others, but every request it gets is one line in its access log
SHADOW_PORT=""
SHADOW_LOG=$TMP/shadow.access.log
if ((NEED_SHADOW)); then
    free_port; SHADOW_PORT=$PORT
    start_upstream shadow "$SHADOW_PORT" "shadow" "$SHADOW_LOG"
fi
shadow_lines() { if [[ -f "$SHADOW_LOG" ]]; then wc -l <"$SHADOW_LOG"; else echo 0; fi; }
# shadow_settle: wait (<= 5 s) until the shadow's log stops growing (copies still in flight), sets SHADOW_NOW
shadow_settle() {
    local prev=-1 stable=0 i
    for i in $(seq 1 50); do
        SHADOW_NOW=$(shadow_lines)
        if [[ "$SHADOW_NOW" == "$prev" ]]; then
            stable=$((stable + 1))
            ((stable < 3)) || return 0
        else
            stable=0
        fi
        prev=$SHADOW_NOW
        sleep 0.1
    done
    log "WARNING: shadow access log still growing 5 s after the run"
}

# ---------------------------------------------------------------- targets
# Per target KEY = SCENARIO/PROXY (PROXY: direct nginx haproxy sluice sluice-b): URL, PID (not for
# direct), MIRROR_OF (percent, for instances that mirror), CURL_OPT (readiness and split check options)
declare -A URL=() PID=() MIRROR_OF=() NA=()
declare -A TARGETS=() # scenario -> space-separated proxies measured in it (direct first)

curl_opts() { [[ $1 == h2 ]] && echo --http2-prior-knowledge; return 0; }

# the versions/upstreams of a scenario, for each proxy's config
start_nginx_proxy() { # SCENARIO KEY PORT
    local s=$1 key=$2 port=$3 dir=$TMP/nginx-$1 servers listen="127.0.0.1:$3" extra="" blocks="" ka
    ka=$(nginx_keepalive "$s")
    if [[ $s == weighted ]]; then
        servers="        server 127.0.0.1:$UP1 weight=9;
        server 127.0.0.1:$UP2 weight=1;"
    else
        servers="        server 127.0.0.1:$UP1;"
    fi
    [[ $s == h2 ]] && listen+=" http2"
    if [[ $s == mirror ]]; then
        # every request is also sent to the shadow (a subrequest; its answer is thrown away), over
        # keep-alive connections of their own, as sluice's copies are
        blocks="    upstream shadow {
        server 127.0.0.1:$SHADOW_PORT;
        keepalive $ka;
        keepalive_requests 10000000;
    }"
        extra="        mirror /_mirror;
        location = /_mirror {
            internal;
            mirror off;
            proxy_pass http://shadow\$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }"
        MIRROR_OF[$key]=100
    fi
    NGINX_KEEPALIVE=$ka write_nginx_proxy_conf "$dir" "$listen" "$servers" "$extra" "$blocks"
    # shellcheck disable=SC2046
    start_nginx "nginx proxy ($s)" "$dir" "$PROXY_CORE" "http://127.0.0.1:$port/" $(curl_opts "$s")
    log "nginx proxy ($s) on 127.0.0.1:$port (pid $STARTED_PID, core $PROXY_CORE, upstream keepalive $ka)"
}

start_haproxy() { # SCENARIO KEY PORT
    local s=$1 port=$3 dir=$TMP/haproxy-$1 servers bind_opts="backlog 4096" i
    if [[ $s == weighted ]]; then
        servers="    server up1 127.0.0.1:$UP1 weight 9
    server up2 127.0.0.1:$UP2 weight 1"
    else
        servers="    server up1 127.0.0.1:$UP1"
    fi
    [[ $s == h2 ]] && bind_opts+=" proto h2"
    mkdir -p "$dir"
    # no max-reuse: server connections are reused without limit (the default), so nothing stands in for
    # NGINX's keepalive_requests; client connections have no request limit in HAProxy either
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s
    http-reuse always
frontend bench
    bind 127.0.0.1:$port $bind_opts
    default_backend upstreams
backend upstreams
    balance roundrobin
$servers
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 || die "haproxy config check failed: $(tail -n 5 "$dir/check.log")"
    taskset -c "$PROXY_CORE" haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_PIDS+=("$STARTED_PID")
    # shellcheck disable=SC2046
    wait_ready "haproxy ($s)" "$STARTED_PID" "http://127.0.0.1:$port/" "$dir/stdout.log" $(curl_opts "$s")
    log "haproxy ($s) on 127.0.0.1:$port (pid $STARTED_PID, core $PROXY_CORE)"
    if [[ -s "$dir/stdout.log" ]]; then
        while IFS= read -r i; do log "  haproxy: $i"; done < <(head -n 5 "$dir/stdout.log")
    fi
}

# start_sluice SCENARIO KEY PORT NAME BINARY TAG MIRROR_PERCENT: config $TMP/TAG-SCENARIO.yaml, log
# $TMP/TAG-SCENARIO.log; with a percent, version "shadow" (weight 0) gets that share mirrored to it
start_sluice() {
    local s=$1 key=$2 port=$3 name=$4 bin=$5 tag=$6-$1 mirror=$7 cfg versions routing mirror_cfg=""
    cfg=$TMP/$tag.yaml
    if [[ $s == weighted ]]; then
        versions="      blue: { endpoints: [127.0.0.1:$UP1] }
      canary: { endpoints: [127.0.0.1:$UP2] }"
        routing="    routing:
      weights: { blue: 90, canary: 10 }
      sticky: { cookie: s, hash_key: \"header:x-user-id\" }"
    else
        versions="      blue: { endpoints: [127.0.0.1:$UP1] }"
        routing="    routing: { weights: { blue: 100 } }"
    fi
    if [[ -n "$mirror" ]]; then
        versions+="
      shadow: { endpoints: [127.0.0.1:$SHADOW_PORT] }"
        mirror_cfg="
    mirror:
      - { version: shadow, percent: $mirror }"
        MIRROR_OF[$key]=$mirror
    fi
    cat >"$cfg" <<EOF
workers: 1
listeners: [{ name: bench, address: 127.0.0.1:$port }]
services:
  - name: bench
    versions:
$versions
$routing$mirror_cfg
EOF
    # shellcheck disable=SC2046
    spawn_sluice "$name ($s)" "$bin" "$cfg" "$tag" "http://127.0.0.1:$port/" $(curl_opts "$s")
    log "$name ($s) on 127.0.0.1:$port (pid $STARTED_PID, core $PROXY_CORE, $bin)"
}

for s in "${SCENARIO_LIST[@]}"; do
    TARGETS[$s]=direct
    if [[ $s == h2 ]]; then URL[$s/direct]="http://127.0.0.1:$UP1_H2C/"; else URL[$s/direct]="http://127.0.0.1:$UP1/"; fi
    for p in "${PROXY_LIST[@]}"; do
        key=$s/$p
        if [[ $p == haproxy && $s == mirror ]]; then
            NA[$key]="n/a: HAProxy has no simple request mirroring"
            continue
        fi
        free_port
        port=$PORT
        URL[$key]="http://127.0.0.1:$port/"
        case $p in
            nginx) start_nginx_proxy "$s" "$key" "$port" ;;
            haproxy) start_haproxy "$s" "$key" "$port" ;;
            sluice)
                mp=$MIRROR_PERCENT
                [[ $s == mirror ]] && mp=${MIRROR_PERCENT:-100}
                start_sluice "$s" "$key" "$port" sluice "$SLUICE" sluice "$mp"
                ;;
            sluice-b)
                mp=$SLUICE_B_MIRROR_PERCENT
                [[ $s == mirror ]] && mp=${SLUICE_B_MIRROR_PERCENT:-100}
                start_sluice "$s" "$key" "$port" "$SLUICE_B_LABEL" "$SLUICE_B_BIN" sluice-b "$mp"
                ;;
        esac
        PID[$key]=$STARTED_PID
        TARGETS[$s]+=" $p"
    done
done

# split check: 200 requests on one connection, count which upstream answered; h2: 20 requests, one
# curl each (curl 7.88 returns nothing for the second URL on a reused h2c prior-knowledge connection)
declare -A SPLIT=()
split_check() { # KEY
    local key=$1 urls=() i body="" n1 n2 n=200
    if [[ ${key%%/*} == h2 ]]; then
        n=20
        for i in $(seq 1 $n); do
            body+="$(curl -s -m 5 --http2-prior-knowledge "${URL[$key]}" || true)"$'\n'
        done
    else
        for i in $(seq 1 $n); do urls+=("${URL[$key]}"); done
        body=$(curl -s -m 20 "${urls[@]}" || true)
    fi
    n1=$(grep -c '^up1$' <<<"$body" || true)
    n2=$(grep -c '^up2$' <<<"$body" || true)
    SPLIT[$key]="$n1/$n2"
    log "split check $key: up1=$n1 up2=$n2 of $n"
}
STICKY_NOTE=""
for s in "${SCENARIO_LIST[@]}"; do
    for p in ${TARGETS[$s]}; do
        [[ $p == direct ]] || split_check "$s/$p"
    done
    if [[ $s == weighted && -n "${URL[weighted/sluice]:-}" ]]; then
        if curl -s -m 5 -o /dev/null -D - "${URL[weighted/sluice]}" | grep -qi '^set-cookie: s='; then
            STICKY_NOTE="sluice answers a request without cookie and key with \`Set-Cookie: s=...\` (checked)."
        else
            log "WARNING: weighted sluice did not set the sticky cookie"
            STICKY_NOTE="WARNING: sluice did not set the sticky cookie in the check."
        fi
    fi
done

# ---------------------------------------------------------------- load
# per target KEY, space-separated, one value per round: closed-loop req/s, CPU µs/request, wrk p99;
# open-loop p50/p99/p99.9 ms, achieved rate, client lag p99 µs, CPU µs/request at RATE
declare -A RPS=() CPU=() CP99=() P50=() P99=() P999=() ORATE=() LAG=() OCPU=() ERR=() RSS=()
declare -A SHADOW_GOT=() SHADOW_SERVED=() SHADOW_GOT_O=() SHADOW_SERVED_O=()
RAW=()
RUN_N=0

# closed_run KEY DURATION: wrk (HTTP/1.1) or h2load (h2c) against KEY; the proxy's CPU over the run
# when KEY has a PID. Sets C_REQS C_RPS C_P99 C_CPU C_NOTE
closed_run() {
    local key=$1 dur=$2 pid=${PID[$1]:-} out s=${1%%/*} f sockerr non2xx proto
    RUN_N=$((RUN_N + 1))
    out=$TMP/runs/$RUN_N.closed.${key//\//.}.txt
    [[ -z "$pid" ]] || cpu_begin "$pid" "$key"
    # in the background + wait, so that a signal interrupts the wait and the trap runs at once
    if [[ $s == h2 ]]; then
        taskset -c "$LOAD_CORE" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$dur" "${URL[$key]}" >"$out" 2>&1 &
    else
        taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${dur}s" --latency "${URL[$key]}" >"$out" 2>&1 &
    fi
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || die "load generator failed against $key: $(tail -n3 "$out")"
    LOADGEN_PID=""
    [[ -z "$pid" ]] || cpu_end "$pid" "$key" "$key"
    C_NOTE=""
    if [[ $s == h2 ]]; then
        # finished in 10.00s, 52345.67 req/s, ...
        # requests: T total, S started, D done, K succeeded, F failed, E errored, O timeout
        # status codes: a 2xx, b 3xx, c 4xx, d 5xx
        C_RPS=$(awk '/^finished in / { printf "%.0f", $4; exit }' "$out")
        read -r -a f <<<"$(awk '/^requests: / { print $6, $8, $10, $12, $14; exit }' "$out")"
        C_REQS=${f[0]:-}
        non2xx=$(awk '/^status codes: / { print $5 + $7 + $9; exit }' "$out")
        proto=$(sed -n 's/^Application protocol: //p' "$out" | head -n1)
        [[ -n "$C_REQS" && -n "$C_RPS" ]] || die "cannot parse h2load output for $key: $out"
        [[ "$proto" == h2c ]] || die "h2load against $key spoke '${proto:-nothing}', not h2c: $out"
        ((f[2] + f[3] + f[4] == 0)) || C_NOTE+="h2load failed ${f[2]}, errored ${f[3]}, timeout ${f[4]} (of ${f[0]} done, ${f[1]} ok); "
        ((${non2xx:-0} == 0)) || C_NOTE+="non-2xx: $non2xx; "
        C_P99="-"
    else
        C_REQS=$(awk '/ requests in / {print $1; exit}' "$out")
        C_RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2; exit}' "$out")
        C_P99=$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$out")")
        non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$out")
        sockerr=$(sed -n 's/^ *Socket errors: *//p' "$out" | head -n1)
        [[ -n "$C_REQS" && -n "$C_RPS" ]] || die "cannot parse wrk output for $key: $out"
        [[ -n "$non2xx" ]] && C_NOTE+="non-2xx/3xx: $non2xx; "
        [[ -n "$sockerr" ]] && C_NOTE+="socket errors: $sockerr; "
    fi
    if [[ -n "$pid" ]]; then C_CPU=$(cpu_us_per "$CPU_DELTA" "$C_REQS"); else C_CPU="-"; fi
    [[ -z "$C_NOTE" ]] || log "WARNING: $key closed loop: $C_NOTE"
    return 0
}

# open_run KEY: the open-loop client at RATE against KEY (h2c for h2). Sets O_REQS O_SENT O_RATE
# O_P50 O_P99 O_P999 O_LAG O_CPU O_NOTE
open_run() {
    local key=$1 pid=${PID[$1]:-} s=${1%%/*} out addr proto=http1 conns=$CONNS errors
    RUN_N=$((RUN_N + 1))
    out=$TMP/runs/$RUN_N.open.${key//\//.}.txt
    addr=${URL[$key]#http://}
    addr=${addr%/}
    if [[ $s == h2 ]]; then proto=h2c conns=$H2_CONNS; fi
    [[ -z "$pid" ]] || cpu_begin "$pid" "$key"
    OPENLOOP_ADDR=$addr OPENLOOP_PROTO=$proto OPENLOOP_RATE=$RATE OPENLOOP_SECONDS=$RATE_DURATION \
        OPENLOOP_WARMUP=$RATE_WARMUP OPENLOOP_CONNS=$conns OPENLOOP_STREAMS=$H2_STREAMS \
        taskset -c "$LOAD_CORE" "$OPENLOOP" >"$out" 2>"$out.err" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || die "open-loop client failed against $key: $(tail -n3 "$out.err")"
    LOADGEN_PID=""
    [[ -z "$pid" ]] || cpu_end "$pid" "$key" "$key"
    O_REQS=$(ofield requests "$out")
    O_SENT=$(ofield sent "$out")
    O_RATE=$(ofield rate "$out")
    O_P50=$(ofield p50_ms "$out")
    O_P99=$(ofield p99_ms "$out")
    O_P999=$(ofield p999_ms "$out")
    O_LAG=$(ofield lag_p99_us "$out")
    errors=$(ofield errors "$out")
    [[ -n "$O_REQS" && -n "$O_P99" && -n "$errors" && -n "$O_SENT" ]] || die "cannot parse open-loop output for $key: $out"
    # over the whole run: priming, warm-up and measured window
    if [[ -n "$pid" ]]; then O_CPU=$(cpu_us_per "$CPU_DELTA" "$O_SENT"); else O_CPU="-"; fi
    O_NOTE=""
    ((errors == 0)) || O_NOTE+="open loop: $errors errors ($(head -c 300 "$out.err" | tr '\n' ' ')); "
    # the rate must be held, or the percentiles are of a saturated server
    awk -v a="$O_RATE" -v r="$RATE" 'BEGIN { exit !(a < 0.97 * r) }' \
        && O_NOTE+="open loop reached only $O_RATE of $RATE req/s; "
    [[ -z "$O_NOTE" ]] || log "WARNING: $key: $O_NOTE"
    return 0
}

# shadow accounting around a run of KEY (only for instances that mirror)
shadow_before() { if [[ -n "${MIRROR_OF[$1]:-}" ]]; then shadow_settle; SHADOW_START=$SHADOW_NOW; fi; }
shadow_after() { # KEY SERVED closed|open: sets SHADOW_NOTE
    SHADOW_NOTE=""
    [[ -n "${MIRROR_OF[$1]:-}" ]] || return 0
    shadow_settle
    local got=$((SHADOW_NOW - SHADOW_START))
    if [[ $3 == closed ]]; then
        SHADOW_GOT[$1]=$((${SHADOW_GOT[$1]:-0} + got))
        SHADOW_SERVED[$1]=$((${SHADOW_SERVED[$1]:-0} + $2))
    else
        SHADOW_GOT_O[$1]=$((${SHADOW_GOT_O[$1]:-0} + got))
        SHADOW_SERVED_O[$1]=$((${SHADOW_SERVED_O[$1]:-0} + $2))
    fi
    SHADOW_NOTE="shadow got $got of $2"
}

# measure KEY ROUND: one closed-loop and one open-loop run, recorded
measure() {
    local key=$1 r=$2 s=${1%%/*} p=${1#*/} note="" cshadow="" oshadow=""
    shadow_before "$key"
    closed_run "$key" "$DURATION"
    shadow_after "$key" "$C_REQS" closed
    cshadow=$SHADOW_NOTE
    RPS[$key]+="$C_RPS "
    CPU[$key]+="$C_CPU "
    CP99[$key]+="$C_P99 "
    note+=$C_NOTE
    O_RATE="-" O_P50="-" O_P99="-" O_P999="-" O_LAG="-" O_CPU="-"
    if ((OPEN)); then
        shadow_before "$key"
        open_run "$key"
        # every request sent is mirrored, priming and warm-up included
        shadow_after "$key" "$O_SENT" open
        oshadow=$SHADOW_NOTE
        P50[$key]+="$O_P50 "
        P99[$key]+="$O_P99 "
        P999[$key]+="$O_P999 "
        ORATE[$key]+="$O_RATE "
        LAG[$key]+="$O_LAG "
        OCPU[$key]+="$O_CPU "
        note+=$O_NOTE
    fi
    [[ -z "$note" ]] || ERR[$key]+="round $r: $note"
    log "round $r/$ROUNDS $key: $C_RPS req/s, $C_CPU CPU us/req${cshadow:+ ($cshadow)}$( ((OPEN)) && echo "; at $RATE req/s: p50 $O_P50 p99 $O_P99 p99.9 $O_P999 ms, CPU $O_CPU us/req${oshadow:+ ($oshadow)}")"
    note=${note%; }
    RAW+=("| $r | $s | $(name_of "$p") | $C_RPS | $C_CPU | $C_P99 | $O_RATE | $O_P50 | $O_P99 | $O_P999 | $O_LAG | $O_CPU | ${cshadow:+closed: $cshadow}${oshadow:+; open: $oshadow} | ${note:-none} |")
}

name_of() {
    case $1 in
        direct) echo "direct" ;;
        nginx) echo "NGINX" ;;
        haproxy) echo "HAProxy" ;;
        sluice) echo "sluice" ;;
        sluice-b) echo "$SLUICE_B_LABEL" ;;
    esac
}

N_TARGETS=0
for s in "${SCENARIO_LIST[@]}"; do for p in ${TARGETS[$s]}; do N_TARGETS=$((N_TARGETS + 1)); done; done
PER_RUN=$DURATION
((OPEN)) && PER_RUN=$(awk -v d="$DURATION" -v o="$RATE_DURATION" -v w="$RATE_WARMUP" 'BEGIN { printf "%d", d + o + w + 1 }')
log "$N_TARGETS targets x $ROUNDS rounds, about $((N_TARGETS * (ROUNDS * PER_RUN + WARMUP) / 60 + 1)) min of load"

if ((WARMUP > 0)); then
    log "warm-up: ${WARMUP}s closed loop per target"
    for s in "${SCENARIO_LIST[@]}"; do
        for p in ${TARGETS[$s]}; do closed_run "$s/$p" "$WARMUP"; done
    done
fi
if ((NEED_SHADOW)); then
    shadow_settle
    log "shadow: $SHADOW_NOW requests before the measured rounds (start-up, split check, warm-up)"
fi

for r in $(seq 1 "$ROUNDS"); do
    for s in "${SCENARIO_LIST[@]}"; do
        read -r -a order <<<"${TARGETS[$s]}"
        # rotate the order by one per round, so no target always runs first or right after another
        n=${#order[@]}
        for i in $(seq 0 $((n - 1))); do
            measure "$s/${order[$(((i + r - 1) % n))]}" "$r"
        done
    done
done

for s in "${SCENARIO_LIST[@]}"; do
    for p in ${TARGETS[$s]}; do
        [[ $p == direct ]] && continue
        # shellcheck disable=SC2046
        RSS[$s/$p]=$(hwm_kb $(proc_tree "${PID[$s/$p]}"))
    done
done
SLUICE_WARN=0
SLUICE_B_WARN=0
for f in "$TMP"/sluice-*.log; do
    [[ -e "$f" && $f != *.stdout.log ]] || continue
    case $f in
        "$TMP"/sluice-b-*.log) SLUICE_B_WARN=$((SLUICE_B_WARN + $(count_warn "$f"))) ;;
        *) SLUICE_WARN=$((SLUICE_WARN + $(count_warn "$f"))) ;;
    esac
done

# ---------------------------------------------------------------- report
# per-round differences KEY - DIRECT of one open-loop percentile list (arrays of the same rounds)
added() { # LIST_NAME KEY
    local -n list=$1
    local a b i out=""
    read -r -a a <<<"${list[$2]}"
    read -r -a b <<<"${list[${2%%/*}/direct]}"
    for i in "${!a[@]}"; do out+="$(minus "${a[$i]}" "${b[$i]:-}") "; done
    echo "$out"
}

scenario_title() {
    case $1 in
        single) echo "one upstream" ;;
        weighted) echo "weighted 90/10 over two upstreams" ;;
        mirror) echo "one upstream, every request mirrored to a shadow upstream" ;;
        h2) echo "h2c clients, one HTTP/1.1 upstream" ;;
    esac
}
scenario_text() {
    case $1 in
        single) echo "Each proxy forwards to one nginx upstream (\`return 200\`) over keep-alive HTTP/1.1." ;;
        weighted) echo "NGINX (\`weight=9\`/\`weight=1\`) and HAProxy (\`balance roundrobin\`, \`weight 9\`/\`weight 1\`) do a plain 9:1 split; sluice splits 90/10 with sticky sessions on (\`sticky: { cookie: s, hash_key: \"header:x-user-id\" }\`) and its metrics (always on). The load carries neither the cookie nor the header, so every request is a new visitor to sluice: picked by weight and answered with a \`Set-Cookie\`. $STICKY_NOTE" ;;
        mirror) echo "Each request to the one upstream is also copied to a third nginx (the shadow: same \`return 200\`, core $LOAD_CORE, access log on to count the copies), the copy's answer thrown away. sluice: version \`shadow\` (weight 0) and \`mirror: [{ version: shadow, percent: P }]\` (default \`max_in_flight\`: copies beyond 64 in flight are dropped). NGINX: \`mirror /_mirror;\` with \`location = /_mirror { internal; proxy_pass http://shadow\$request_uri; }\` to an upstream block with \`keepalive $(nginx_keepalive mirror)\` (NGINX finishes a client request only when its mirror subrequest is done, so it never drops a copy: it slows the client down instead). HAProxy has no simple request mirroring (only SPOE/Lua-based add-ons): n/a." ;;
        h2) echo "Clients speak HTTP/2 with prior knowledge (h2c) on a plain port: NGINX \`listen ... http2\`, HAProxy \`bind ... proto h2\`, sluice's plain listener (it detects the preface); the upstream stays HTTP/1.1. Closed loop: \`h2load -t1 -c$H2_CONNS -m$H2_STREAMS\`; open loop: $H2_CONNS h2c connections with up to $H2_STREAMS requests in flight each. Direct: h2c to the upstream nginx itself (\`listen ... http2\` on a second port). Up to $((H2_CONNS * H2_STREAMS)) requests can be in flight, so each proxy may need as many upstream connections: NGINX's upstream \`keepalive\` is $(nginx_keepalive h2) here (with 64 it closes and reopens upstream connections all the time), HAProxy's idle pool is unlimited by default, sluice keeps at most 1024 idle connections per endpoint." ;;
    esac
}

row() { # KEY NAME
    local key=$1 name=$2 p=${1#*/} rss cpu errs a50="-" a99="-" a999="-"
    if [[ -n "${NA[$key]:-}" ]]; then
        if ((OPEN)); then
            printf '| %s | %s | | | | | | | | | |\n' "$name" "${NA[$key]}"
        else
            printf '| %s | %s | | | | |\n' "$name" "${NA[$key]}"
        fi
        return 0
    fi
    # shellcheck disable=SC2086
    if [[ $p == direct ]]; then cpu="-"; else cpu=$(cell "%.1f" ${CPU[$key]}); fi
    if [[ -n "${RSS[$key]:-}" ]]; then rss=$(kb_to_mb "${RSS[$key]}"); else rss="-"; fi
    errs=${ERR[$key]:-none}
    errs=${errs%; }
    if ((OPEN)); then
        if [[ $p != direct ]]; then
            # shellcheck disable=SC2046
            a50=$(cell "%+.3f" $(added P50 "$key"))
            # shellcheck disable=SC2046
            a99=$(cell "%+.3f" $(added P99 "$key"))
            # shellcheck disable=SC2046
            a999=$(cell "%+.3f" $(added P999 "$key"))
        fi
        # shellcheck disable=SC2086
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$(cell "%.0f" ${RPS[$key]})" \
            "$cpu" "$(cell "%.3f" ${P50[$key]})" "$(cell "%.3f" ${P99[$key]})" "$(cell "%.3f" ${P999[$key]})" \
            "$a50" "$a99" "$a999" "$rss" "$errs"
    else
        # shellcheck disable=SC2086
        printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$(cell "%.0f" ${RPS[$key]})" "$cpu" \
            "$(cell "%.2f" ${CP99[$key]})" "$rss" "$errs"
    fi
}

row_name() { # PROXY
    case $1 in
        direct) echo "direct (reference)" ;;
        nginx) echo "NGINX ${NGINX_VERSION#nginx/}" ;;
        haproxy) echo "HAProxy ${HAPROXY_VERSION%%-*}" ;;
        sluice) echo "sluice" ;;
        sluice-b) echo "$SLUICE_B_LABEL" ;;
    esac
}

pct_of() { awk -v g="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f%%", g / s * 100; else print "?" }'; }

scenario_table() { # SCENARIO
    local s=$1 p key line
    echo "### $(scenario_title "$s")"
    echo
    scenario_text "$s"
    echo
    if ((OPEN)); then
        echo "| proxy | req/s | CPU µs/request | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | peak RSS MB | errors |"
        echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    else
        echo "| proxy | req/s | CPU µs/request | p99 ms (closed loop) | peak RSS MB | errors |"
        echo "| --- | --- | --- | --- | --- | --- |"
    fi
    for p in nginx haproxy sluice sluice-b direct; do
        key=$s/$p
        [[ -n "${URL[$key]:-}${NA[$key]:-}" ]] || continue
        row "$key" "$(row_name "$p")$([[ -n "${MIRROR_OF[$key]:-}" && $s != mirror ]] && echo " (mirror ${MIRROR_OF[$key]}%)")"
    done
    echo
    if [[ -n "${URL[$s/sluice-b]:-}" ]]; then
        # shellcheck disable=SC2086
        line="sluice vs $SLUICE_B_LABEL: CPU µs/request $(rel_diff "$(median ${CPU[$s/sluice]})" "$(median ${CPU[$s/sluice-b]})"), req/s $(rel_diff "$(median ${RPS[$s/sluice]})" "$(median ${RPS[$s/sluice-b]})")"
        # shellcheck disable=SC2086
        ((OPEN)) && line+=", p99 at $RATE req/s $(rel_diff "$(median ${P99[$s/sluice]})" "$(median ${P99[$s/sluice-b]})")"
        echo "$line."
    fi
    line="Split check ($([[ $s == h2 ]] && echo "20 requests, one connection each" || echo "200 requests on one connection"), up1/up2):"
    for p in ${TARGETS[$s]}; do
        [[ $p == direct ]] || line+=" $(name_of "$p") ${SPLIT[$s/$p]},"
    done
    echo "${line%,}."
    for p in ${TARGETS[$s]}; do
        key=$s/$p
        [[ -n "${MIRROR_OF[$key]:-}" ]] || continue
        line="Shadow received, $(name_of "$p") (mirror ${MIRROR_OF[$key]}%): $(pct_of "${SHADOW_GOT[$key]:-0}" "${SHADOW_SERVED[$key]:-0}") of the closed-loop requests (${SHADOW_GOT[$key]:-0} of ${SHADOW_SERVED[$key]:-0})"
        ((OPEN)) && line+=", $(pct_of "${SHADOW_GOT_O[$key]:-0}" "${SHADOW_SERVED_O[$key]:-0}") of the open-loop ones (${SHADOW_GOT_O[$key]:-0} of ${SHADOW_SERVED_O[$key]:-0})"
        echo "$line."
    done
    echo
}

REPORT=$(
    echo "## Load comparison: sluice vs NGINX vs HAProxy"
    echo
    echo "$ROUNDS interleaved round(s) per target; each cell is the median of the rounds with (min–max)."
    echo "Proxies pinned to core $PROXY_CORE with one worker/thread (NGINX \`worker_processes 1\`, upstream \`keepalive $(nginx_keepalive single)\`$(has h2 "${SCENARIO_LIST[@]}" && echo " (h2: $(nginx_keepalive h2))"); HAProxy \`nbthread 1\`, \`http-reuse always\`; sluice \`workers: 1\`); load generators and upstream nginx servers (\`return 200\`, 1 worker each) pinned to core $LOAD_CORE; \`keepalive_requests 10000000\` on every nginx."
    echo "req/s: closed loop, \`wrk -t1 -c$CONNS -d${DURATION}s\` (h2: \`h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D $DURATION\`); capped by the load core, so compare CPU µs/request: the proxy's utime+stime (/proc/PID/stat, all its processes) over that run ÷ requests."
    if ((OPEN)); then
        echo "Latency: open loop at a fixed $RATE req/s for ${RATE_DURATION}s after ${RATE_WARMUP}s at the same rate, $CONNS keep-alive connections (\`benches/openloop.rs\`, one thread), measured from each request's intended start (coordinated omission corrected); added = the proxy's percentile minus the direct connection's, per round, then median (min–max)."
    fi
    echo "Peak RSS: VmHWM at the end, summed over the proxy's processes (NGINX: master + worker)."
    echo
    echo "sluice $SLUICE_REV; nginx ${NGINX_VERSION#nginx/}${HAPROXY_VERSION:+, HAProxy $HAPROXY_VERSION}, wrk $WRK_VERSION${H2LOAD_VERSION:+, h2load $H2LOAD_VERSION}; $(date -u +%Y-%m-%dT%H:%MZ), CLK_TCK=$CLK_TCK."
    [[ -n "$SLUICE_B_BIN" ]] && echo "$SLUICE_B_LABEL: $SLUICE_B_REV."
    echo "sluice log WARN/ERROR lines: $SLUICE_WARN$([[ -n "$SLUICE_B_BIN" ]] && echo ", $SLUICE_B_LABEL: $SLUICE_B_WARN")."
    echo
    for s in "${SCENARIO_LIST[@]}"; do scenario_table "$s"; done
    echo "### Raw rounds"
    echo
    if ((OPEN)); then
        echo "Closed loop: req/s, proxy CPU µs/request, p99 ms (wrk; h2load has none). Open loop at $RATE req/s: achieved rate, p50/p99/p99.9 ms, the client's own lag p99 µs (how late requests left the client: pacing, wake-up, waiting for a free connection; part of every latency), proxy CPU µs/request over the whole open-loop run (priming and warm-up included; at this rate mostly per-wake-up cost, not comparable with the closed-loop figure); shadow: copies the shadow received of the requests sent, for instances that mirror."
    else
        echo "Closed loop: req/s, proxy CPU µs/request, p99 ms (wrk; h2load has none). No open-loop runs (RATE=0)."
    fi
    echo
    echo "| round | scenario | proxy | req/s | CPU µs/req | p99 ms | open-loop req/s | p50 ms | p99 ms | p99.9 ms | client lag p99 µs | CPU µs/req at rate | shadow | errors |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${RAW[@]}"
)

print_table "$REPORT"
for f in "$TMP"/sluice-*.log; do
    [[ -e "$f" && $f != *.stdout.log ]] || continue
    show_warn "$(basename "$f" .log)" "$f" "$(count_warn "$f")"
done
