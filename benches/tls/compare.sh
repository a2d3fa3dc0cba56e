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
#   CLIENT_BIN   path to the tls_handshake bench binary; when set, it is not built
set -euo pipefail

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

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

log() { printf '[tls-compare] %s\n' "$*" >&2; }
die() { printf '[tls-compare] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds)"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (seconds)"
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || die "CONCURRENCY must be a positive integer"
read -r -a VERSIONS <<<"$TLS_VERSIONS"
read -r -a MODE_LIST <<<"$MODES"
((${#VERSIONS[@]})) || die "TLS_VERSIONS is empty"
((${#MODE_LIST[@]})) || die "MODES is empty"
for v in "${VERSIONS[@]}"; do [[ $v == 1.3 || $v == 1.2 ]] || die "TLS_VERSIONS: '$v' is not 1.3 or 1.2"; done
for m in "${MODE_LIST[@]}"; do [[ $m == full || $m == resumed ]] || die "MODES: '$m' is not full or resumed"; done
[[ -z "$SLUICE_BIN" || -x "$SLUICE_BIN" ]] || die "SLUICE_BIN=$SLUICE_BIN is not an executable file"
[[ -z "$CLIENT_BIN" || -x "$CLIENT_BIN" ]] || die "CLIENT_BIN=$CLIENT_BIN is not an executable file"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/sluice-tls-compare.XXXXXX)
STARTED_PIDS=()
CLIENT_PID=""

# proc_start PID: start time (field 22 of /proc/PID/stat), to tell a process from a reused PID
proc_start() {
    local rest
    { read -r rest <"/proc/$1/stat"; } 2>/dev/null || return 0
    rest=${rest##*) }
    read -r -a rest <<<"$rest"
    echo "${rest[19]}"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid last=${!:-} ppid rest i
    local -A desc=()
    if [[ -n "${CLIENT_PID:-}" ]]; then
        kill -TERM "$CLIENT_PID" 2>/dev/null || true
        wait "$CLIENT_PID" 2>/dev/null || true
    fi
    # a signal can land between 'cmd &' and recording its PID: take the last background job too,
    # but only while it is still a direct child of this script
    if [[ -n "$last" && " ${STARTED_PIDS[*]} " != *" $last "* ]]; then
        if { read -r rest <"/proc/$last/stat"; } 2>/dev/null; then
            rest=${rest##*) }
            read -r _ ppid _ <<<"$rest"
            if [[ "$ppid" == "$$" ]]; then STARTED_PIDS+=("$last"); fi
        fi
    fi
    # remember descendants (nginx workers) with their start times, in case a parent has to be KILLed
    if declare -F proc_tree >/dev/null; then
        for pid in "${STARTED_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || continue
            for i in $(proc_tree "$pid"); do
                [[ "$i" == "$pid" ]] || desc[$i]=$(proc_start "$i")
            done
        done
    fi
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM for 5 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${!desc[@]}"; do
        if [[ -n "${desc[$pid]}" && "$(proc_start "$pid")" == "${desc[$pid]}" ]]; then
            log "descendant pid $pid still alive: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
need_install=()
command -v nginx >/dev/null 2>&1 || need_install+=(nginx)
command -v openssl >/dev/null 2>&1 || need_install+=(openssl)
command -v curl >/dev/null 2>&1 || need_install+=(curl)
command -v taskset >/dev/null 2>&1 || need_install+=(util-linux)
if ((${#need_install[@]})); then
    log "installing: ${need_install[*]}"
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need_install[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >/dev/null
fi
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's/^nginx version: //p')
[[ -n "$NGINX_VERSION" ]] || die "nginx -v gave no version"
NGINX_SSL=$(nginx -V 2>&1 | sed -n 's/^.*running with \([^)]*\)).*$/\1/p' | head -n1)
[[ -n "$NGINX_SSL" ]] || NGINX_SSL=$(nginx -V 2>&1 | sed -n 's/^built with //p' | head -n1)
RUSTLS_VERSION=$(awk '/^name = "rustls"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$REPO/Cargo.lock" 2>/dev/null || true)
log "nginx: $NGINX_VERSION ($NGINX_SSL), rustls: ${RUSTLS_VERSION:-?}"
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
((NCPU >= 2)) || log "WARNING: only $NCPU CPU(s); pinning to cores 0 and 1 will fail"

# ---------------------------------------------------------------- build
bin_sha() { sha256sum "$1" 2>/dev/null | cut -c1-12; }
if [[ -n "$SLUICE_BIN" ]]; then
    SLUICE=$SLUICE_BIN
    log "SLUICE_BIN set: using $SLUICE, not building"
else
    SLUICE=$TARGET/release/sluice
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "cargo build --release (target dir: $TARGET)"
        (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet)
    fi
fi
[[ -x "$SLUICE" ]] || die "no sluice binary at $SLUICE"
if [[ -n "$SLUICE_BIN" ]]; then
    SLUICE_REV="$SLUICE (sha256 $(bin_sha "$SLUICE"))"
else
    SLUICE_REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n "$(cd "$REPO" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        SLUICE_REV="$SLUICE_REV+dirty"
    fi
    [[ "${SKIP_BUILD:-0}" == 1 ]] && SLUICE_REV="$SLUICE_REV (SKIP_BUILD: binary sha256 $(bin_sha "$SLUICE"))"
fi

# the client: the bench target's executable, as cargo reports it
if [[ -n "$CLIENT_BIN" ]]; then
    CLIENT=$CLIENT_BIN
elif [[ "${SKIP_BUILD:-0}" == 1 ]]; then
    CLIENT=$(ls -t "$TARGET"/release/deps/tls_handshake-* 2>/dev/null | grep -v '\.d$' | head -n1 || true)
else
    log "cargo bench --bench tls_handshake --no-run (the client)"
    CLIENT=$(cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo bench --bench tls_handshake --no-run \
        --message-format=json-render-diagnostics 2>"$TMP/client-build.log" \
        | grep '"name":"tls_handshake"' | grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4 || true)
fi
[[ -n "$CLIENT" && -x "$CLIENT" ]] || die "no tls_handshake client binary (CLIENT=${CLIENT:-none}); see $TMP/client-build.log"
log "client: $CLIENT"

# ---------------------------------------------------------------- helpers
USED_PORTS=" "
port_in_use() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v h=":$hex" 'NR > 1 && substr($2, length($2) - 4) == h { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_port() { # sets PORT (not called in a subshell, so USED_PORTS persists)
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        port_in_use "$p" && continue
        USED_PORTS+="$p "
        PORT=$p
        return 0
    done
    die "no free port found"
}

# wait_ready NAME PID URL [LOG] [CURL OPTIONS...]: poll with curl until a 200 arrives (bounded)
wait_ready() {
    local name=$1 pid=$2 url=$3 logf=${4:-} i code
    shift 4 || shift $#
    for i in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            [[ -n "$logf" && -s "$logf" ]] && tail -n 5 "$logf" | sed 's/^/    /' >&2
            die "$name (pid $pid) exited during start-up; see $TMP"
        fi
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$@" "$url" || true)
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    die "$name did not answer 200 at $url after 15 s (last code: ${code:-none}); see $TMP"
}

# pids of a process and all its descendants (scans /proc; no CONFIG_PROC_CHILDREN needed)
proc_tree() {
    local root=$1 f rest ppid pid
    local -A parent=()
    for f in /proc/[0-9]*/stat; do
        { read -r rest <"$f"; } 2>/dev/null || continue
        pid=${f#/proc/}; pid=${pid%/stat}
        rest=${rest##*) }
        read -r _ ppid _ <<<"$rest"
        parent[$pid]=$ppid
    done
    local queue=("$root") out=() cur p
    while ((${#queue[@]})); do
        cur=${queue[0]}; queue=("${queue[@]:1}")
        out+=("$cur")
        for p in "${!parent[@]}"; do
            [[ "${parent[$p]}" == "$cur" ]] && queue+=("$p")
        done
    done
    printf '%s\n' "${out[@]}" | sort -n | tr '\n' ' '
}

# cpu_ticks PID...: sum of utime+stime (fields 14, 15 of /proc/PID/stat) in clock ticks
cpu_ticks() {
    local total=0 pid rest
    local -a f
    for pid in "$@"; do
        { read -r rest <"/proc/$pid/stat"; } 2>/dev/null || continue
        rest=${rest##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# hwm_kb PID...: sum of VmHWM (peak RSS) in kB
hwm_kb() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

median() { # numbers as args
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '
        { a[NR] = $1 } END {
            if (NR == 0) { print "?"; exit }
            if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

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
NGINX_USER_LINE=""
[[ $(id -u) == 0 ]] && NGINX_USER_LINE="user root root;"

nginx_common() {
    local dir=$1
    mkdir -p "$dir/logs" "$dir/tmp"
    cat <<EOF
$NGINX_USER_LINE
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; multi_accept on; }
EOF
}
nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
}

free_port; UP=$PORT
start_upstream() {
    local dir=$TMP/upstream
    mkdir -p "$dir"
    {
        nginx_common "$dir"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    server {
        listen 127.0.0.1:$UP reuseport backlog=4096;
        location / { default_type text/plain; return 200 "up\n"; }
    }
}
EOF
    } >"$dir/nginx.conf"
    taskset -c "$LOAD_CORE" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    UP_PID=$!
    STARTED_PIDS+=("$UP_PID")
    wait_ready upstream "$UP_PID" "http://127.0.0.1:$UP/" "$dir/logs/error.log"
    log "upstream nginx on 127.0.0.1:$UP (pid $UP_PID, core $LOAD_CORE)"
}
start_upstream

# ---------------------------------------------------------------- proxies
free_port; NGINX_PORT=$PORT
free_port; SLUICE_PORT=$PORT

start_nginx_proxy() {
    local dir=$TMP/nginx-proxy
    mkdir -p "$dir"
    {
        nginx_common "$dir"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$UP;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl backlog=4096;
        server_name $SNI;
        ssl_certificate $LEAF;
        ssl_certificate_key $LEAF_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    taskset -c "$PROXY_CORE" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    STARTED_PIDS+=("$NGINX_PID")
    wait_ready "nginx proxy" "$NGINX_PID" "https://$SNI:$NGINX_PORT/" "$dir/logs/error.log" \
        "${CURL_TLS[@]}" --resolve "$SNI:$NGINX_PORT:127.0.0.1"
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
    taskset -c "$PROXY_CORE" "$SLUICE" run -c "$cfg" >"$TMP/sluice.stdout.log" 2>"$TMP/sluice.log" &
    SLUICE_PID=$!
    STARTED_PIDS+=("$SLUICE_PID")
    wait_ready sluice "$SLUICE_PID" "https://$SNI:$SLUICE_PORT/" "$TMP/sluice.log" \
        "${CURL_TLS[@]}" --resolve "$SNI:$SLUICE_PORT:127.0.0.1"
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
    local proxy=$1 version=$2 mode=$3 dur=$4 port pid out err pids before after hs secs
    case $proxy in
        nginx) port=$NGINX_PORT pid=$NGINX_PID ;;
        sluice) port=$SLUICE_PORT pid=$SLUICE_PID ;;
    esac
    RUN_NO=$((RUN_NO + 1))
    out=$TMP/client.$RUN_NO.$proxy.$version.$mode.txt
    err=${out%.txt}.err
    kill -0 "$pid" 2>/dev/null || die "$proxy (pid $pid) is gone; see $TMP"
    pids=$(proc_tree "$pid")
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    # in the background + wait, so that a signal interrupts the wait and the trap runs at once
    TLS_BENCH_ADDR=127.0.0.1:$port TLS_BENCH_CA=$CA TLS_BENCH_SNI=$SNI TLS_BENCH_MODE=$mode \
        TLS_BENCH_TLS=$version TLS_BENCH_CONCURRENCY=$CONCURRENCY TLS_BENCH_SECONDS=$dur \
        taskset -c "$LOAD_CORE" "$CLIENT" --bench >"$out" 2>"$err" &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || die "client failed against $proxy (TLS $version, $mode): $(tail -n 3 "$err")"
    CLIENT_PID=""
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    kill -0 "$pid" 2>/dev/null || die "$proxy (pid $pid) died during the run; see $TMP"
    [[ "$(proc_tree "$pid")" == "$pids" ]] || log "WARNING: $proxy process tree changed during the run"
    hs=$(field handshakes "$out")
    secs=$(field seconds "$out")
    [[ -n "$hs" && -n "$secs" ]] || die "cannot parse client output for $proxy: $out"
    LAST_HS=$hs
    LAST_RATE=$(awk -v r="$(field rate "$out")" 'BEGIN { printf "%.0f", r }')
    LAST_FAIL=$(field failures "$out")
    LAST_P50=$(field p50_ms "$out")
    LAST_P99=$(field p99_ms "$out")
    LAST_RESUMED=$(awk -v k="$(field resumed "$out")" -v n="$hs" 'BEGIN { if (n > 0) printf "%.1f", k / n * 100; else print "?" }')
    LAST_CPU=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$hs" \
        'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "?" }')
    LAST_BUSY=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v s="$secs" \
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
SLUICE_WARN=$(grep -ciE '\b(WARN|ERROR)\b' "$TMP/sluice.log" || true)
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
    echo "Peak RSS: NGINX $(awk -v k="$NGINX_RSS" 'BEGIN { printf "%.1f", k / 1024 }') MB (master + worker), sluice $(awk -v k="$SLUICE_RSS" 'BEGIN { printf "%.1f", k / 1024 }') MB. Log lines: sluice WARN/ERROR $SLUICE_WARN, NGINX error/crit $NGINX_ERR."
)

echo
echo "$TABLE"
if [[ -n "$OUT" ]]; then
    printf '%s\n' "$TABLE" >"$OUT"
    log "table written to $OUT"
fi
if ((SLUICE_WARN > 0)); then
    log "sluice log WARN/ERROR lines (first 10):"
    grep -iE '\b(WARN|ERROR)\b' "$TMP/sluice.log" | head -n 10 >&2 || true
fi
