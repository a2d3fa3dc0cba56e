# shellcheck shell=bash
# Shared by the NGINX comparison scripts (benches/load/compare.sh, benches/tls/compare.sh); sourced,
# not run. The caller has `set -euo pipefail` on and sets, before sourcing:
#   BENCH_NAME  log prefix "[BENCH_NAME]" and temp dir /tmp/sluice-BENCH_NAME.XXXXXX
# and reads or sets these globals:
#   REPO, TARGET      (set here) the repository and cargo's target dir ($CARGO_TARGET_DIR or REPO/target)
#   KEEP_TMP          1 = keep the temp dir on success (it is always kept on failure)
#   TMP, STARTED_PIDS (set by bench_start) the temp dir, and the PIDs cleanup terminates
#   LOADGEN_PID       the load generator in flight (wrk, the TLS client), stopped first by cleanup
#   SKIP_BUILD, SLUICE_BIN  see build_sluice
# Processes are only ever signalled by PID: those this script started, and their descendants.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
# absolute: cargo runs from the repo, the binaries are run from elsewhere
TARGET=$(realpath -m -- "$TARGET")

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# check_rounds_duration: ROUNDS and DURATION are positive integers
check_rounds_duration() {
    [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
    [[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds)"
}

# check_bin VAR: the variable named VAR is empty or an executable file
check_bin() {
    [[ -z "${!1}" || -x "${!1}" ]] || die "$1=${!1} is not an executable file"
}

# ---------------------------------------------------------------- cleanup
# proc_start PID: start time (field 22 of /proc/PID/stat), to tell a process from a reused PID
proc_start() {
    local rest
    { read -r rest <"/proc/$1/stat"; } 2>/dev/null || return 0
    rest=${rest##*) }
    read -r -a rest <<<"$rest"
    echo "${rest[19]}"
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

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid last=${!:-} ppid rest i
    local -A desc=()
    if [[ -n "${LOADGEN_PID:-}" ]]; then
        kill -TERM "$LOADGEN_PID" 2>/dev/null || true
        wait "$LOADGEN_PID" 2>/dev/null || true
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
    for pid in "${STARTED_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        for i in $(proc_tree "$pid"); do
            [[ "$i" == "$pid" ]] || desc[$i]=$(proc_start "$i")
        done
    done
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

# bench_start: make the temp dir and install the traps (from here on, every exit cleans up)
bench_start() {
    TMP=$(mktemp -d "/tmp/sluice-$BENCH_NAME.XXXXXX")
    STARTED_PIDS=()
    LOADGEN_PID=""
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------- tools
# check_tools COMMAND[:PACKAGE]...: apt-get install the packages (default: the command's name) of the
# commands not on PATH; then sets NGINX_VERSION
check_tools() {
    local c need_install=()
    for c in "$@"; do
        command -v "${c%%:*}" >/dev/null 2>&1 || need_install+=("${c#*:}")
    done
    if ((${#need_install[@]})); then
        log "installing: ${need_install[*]}"
        [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need_install[*]}"
        apt-get update -qq
        # packages such as nginx and haproxy start their system service on install: not wanted here
        # (it would hold port 80 and run unpinned); a policy-rc.d that says no prevents that
        local policy=/usr/sbin/policy-rc.d made_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
        fi
        local rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >/dev/null || rc=$?
        if ((made_policy)); then rm -f "$policy"; fi
        ((rc == 0)) || die "apt-get install ${need_install[*]} failed (exit $rc)"
    fi
    NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's/^nginx version: //p')
    [[ -n "$NGINX_VERSION" ]] || die "nginx -v gave no version"
}

# check_cpus: sets CLK_TCK; warns when there are fewer than the 2 cores the pinning needs
check_cpus() {
    CLK_TCK=$(getconf CLK_TCK)
    NCPU=$(nproc)
    ((NCPU >= 2)) || log "WARNING: only $NCPU CPU(s); pinning to cores 0 and 1 will fail"
}

# ---------------------------------------------------------------- build
bin_sha() { sha256sum "$1" 2>/dev/null | cut -c1-12; }

# build_sluice: sets SLUICE (SLUICE_BIN, or $TARGET/release/sluice, built unless SKIP_BUILD=1; with
# PGO=1 the profile-guided build, $TARGET/pgo/release/sluice, made by benches/pgo.sh unless
# SKIP_BUILD=1) and SLUICE_REV (what the report calls it)
build_sluice() {
    local pgo=${PGO:-0}
    [[ "$pgo" == 0 || "$pgo" == 1 ]] || die "PGO must be 0 or 1"
    if [[ -n "$SLUICE_BIN" ]]; then
        SLUICE=$SLUICE_BIN
        log "SLUICE_BIN set: using $SLUICE, not building"
    elif ((pgo)); then
        SLUICE=$TARGET/pgo/release/sluice
        if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
            log "benches/pgo.sh (the profile-guided build; about ten minutes)"
            "$REPO/benches/pgo.sh"
        fi
    else
        SLUICE=$TARGET/release/sluice
        if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
            log "cargo build --release (target dir: $TARGET)"
            (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet)
        fi
    fi
    [[ -x "$SLUICE" ]] || die "no sluice binary at $SLUICE"
    if [[ -n "$SLUICE_BIN" ]]; then
        # an arbitrary binary: the working tree's revision says nothing about it
        SLUICE_REV="$SLUICE (sha256 $(bin_sha "$SLUICE"))"
    else
        SLUICE_REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
        if [[ -n "$(cd "$REPO" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
            SLUICE_REV="$SLUICE_REV+dirty"
        fi
        ((pgo)) && SLUICE_REV="$SLUICE_REV, profile-guided build (benches/pgo.sh)"
        [[ "${SKIP_BUILD:-0}" == 1 ]] && SLUICE_REV="$SLUICE_REV (SKIP_BUILD: binary sha256 $(bin_sha "$SLUICE"))"
    fi
    return 0
}

# ---------------------------------------------------------------- helpers
USED_PORTS=" "
port_in_use() {
    # any TCP socket (v4/v6, any state) with this local port
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
        # shellcheck disable=SC2034 # read by the caller
        PORT=$p
        return 0
    done
    die "no free port found"
}

# wait_ready NAME PID URL [LOG] [CURL OPTIONS...]: poll with curl until a 200 arrives (bounded),
# fail if the process died
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

# cpu_ticks PID...: sum of utime+stime (fields 14, 15 of /proc/PID/stat) in clock ticks
cpu_ticks() {
    local total=0 pid rest
    local -a f
    for pid in "$@"; do
        { read -r rest <"/proc/$pid/stat"; } 2>/dev/null || continue
        rest=${rest##*) }          # fields from 3 (state) on
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# cpu_begin PID WHO: PID must be alive; remembers its process tree (CPU_PIDS) and their CPU ticks
cpu_begin() {
    kill -0 "$1" 2>/dev/null || die "$2 (pid $1) is gone; see $TMP"
    CPU_PIDS=$(proc_tree "$1")
    # shellcheck disable=SC2086
    CPU_BEFORE=$(cpu_ticks $CPU_PIDS)
}

# cpu_end PID WHO LABEL: sets CPU_DELTA, the ticks that tree used since cpu_begin; PID must still be
# alive, and a changed tree is reported (as LABEL's)
cpu_end() {
    local after
    # shellcheck disable=SC2086
    after=$(cpu_ticks $CPU_PIDS)
    kill -0 "$1" 2>/dev/null || die "$2 (pid $1) died during the run; see $TMP"
    [[ "$(proc_tree "$1")" == "$CPU_PIDS" ]] || log "WARNING: $3 process tree changed during the run"
    # shellcheck disable=SC2034 # read by the caller
    CPU_DELTA=$((after - CPU_BEFORE))
}

# cpu_us_per TICKS N: microseconds of CPU per unit (TICKS over N units), or ? when N is 0
cpu_us_per() {
    awk -v d="$1" -v hz="$CLK_TCK" -v n="$2" \
        'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "?" }'
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

kb_to_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

median() { # numbers as args
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '
        { a[NR] = $1 } END {
            if (NR == 0) { print "?"; exit }
            if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------- nginx and sluice processes
NGINX_USER_LINE=""
[[ $(id -u) == 0 ]] && NGINX_USER_LINE="user root root;"

# write_nginx_conf DIR HTTP_BLOCKS: DIR/nginx.conf with one worker in the foreground, pid file, logs and
# temp files under DIR, no access log, long keep-alive; HTTP_BLOCKS (upstream and server blocks, indented
# by 4) end the http block
write_nginx_conf() {
    local dir=$1
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
$NGINX_USER_LINE
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$2
}
EOF
}

# write_nginx_proxy_conf DIR LISTEN SERVERS [SERVER_DIRECTIVES] [HTTP_BLOCKS]: DIR/nginx.conf for NGINX
# as the proxy under test: "listen LISTEN backlog=4096;" (LISTEN may end in parameters, e.g. "http2"),
# every request to upstream SERVERS (lines of "server ...;", indented by 8) over HTTP/1.1 with up to
# $NGINX_KEEPALIVE (default 64) idle keep-alive connections; SERVER_DIRECTIVES (lines, indented by 8) go into the server block before
# the location; HTTP_BLOCKS (e.g. more upstream blocks, indented by 4) into the http block before it
write_nginx_proxy_conf() {
    local extra=${4:-} blocks=${5:-}
    [[ -z "$extra" ]] || extra=$'\n'$extra
    [[ -z "$blocks" ]] || blocks+=$'\n'
    write_nginx_conf "$1" "$(cat <<EOF
$blocks    upstream backend {
$3
        keepalive ${NGINX_KEEPALIVE:-64};
        keepalive_requests 10000000;
    }
    server {
        listen $2 backlog=4096;$extra
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
)"
}

# start_nginx NAME DIR CORE URL [CURL OPTIONS...]: nginx with DIR/nginx.conf pinned to CORE, waits
# for a 200 at URL; sets STARTED_PID
start_nginx() {
    local name=$1 dir=$2 core=$3 url=$4
    shift 4
    taskset -c "$core" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    STARTED_PIDS+=("$STARTED_PID")
    wait_ready "$name" "$STARTED_PID" "$url" "$dir/logs/error.log" "$@"
}

# start_upstream NAME PORT BODY [ACCESS_LOG] [H2C_PORT]: nginx in $TMP/NAME on 127.0.0.1:PORT, pinned to
# LOAD_CORE, answering every request with 200 BODY; access log only if given (may be empty); with H2C_PORT
# it also serves HTTP/2 with prior knowledge (h2c, "listen ... http2") there; sets STARTED_PID
start_upstream() {
    local name=$1 port=$2 body=$3 access=${4:-} h2c=${5:-} dir=$TMP/$1 access_line="" h2c_line=""
    [[ -n "$access" ]] && access_line="
        access_log $access;"
    [[ -n "$h2c" ]] && h2c_line="
        listen 127.0.0.1:$h2c http2 reuseport backlog=4096;"
    write_nginx_conf "$dir" "$(cat <<EOF
    server {
        listen 127.0.0.1:$port reuseport backlog=4096;$h2c_line$access_line
        location / { default_type text/plain; return 200 "$body\n"; }
    }
EOF
)"
    start_nginx "$name" "$dir" "$LOAD_CORE" "http://127.0.0.1:$port/"
    log "$name nginx on 127.0.0.1:$port (pid $STARTED_PID, core $LOAD_CORE)"
}

# spawn_sluice NAME BINARY CONFIG TAG URL [CURL OPTIONS...]: BINARY run -c CONFIG pinned to PROXY_CORE,
# stdout in $TMP/TAG.stdout.log, log in $TMP/TAG.log; waits for a 200 at URL; sets STARTED_PID
spawn_sluice() {
    local name=$1 bin=$2 cfg=$3 tag=$4 url=$5
    shift 5
    taskset -c "$PROXY_CORE" "$bin" run -c "$cfg" >"$TMP/$tag.stdout.log" 2>"$TMP/$tag.log" &
    STARTED_PID=$!
    STARTED_PIDS+=("$STARTED_PID")
    wait_ready "$name" "$STARTED_PID" "$url" "$TMP/$tag.log" "$@"
}

# ---------------------------------------------------------------- report
# count_warn LOG: lines with WARN or ERROR
count_warn() { grep -ciE '\b(WARN|ERROR)\b' "$1" || true; }

# show_warn NAME LOG COUNT: when COUNT > 0, the first 10 WARN/ERROR lines of LOG on stderr
show_warn() {
    if (($3 > 0)); then
        log "$1 log WARN/ERROR lines (first 10):"
        grep -iE '\b(WARN|ERROR)\b' "$2" | head -n 10 >&2 || true
    fi
}

# print_table TABLE: on stdout after a blank line, and into $OUT when set
print_table() {
    echo
    echo "$1"
    if [[ -n "$OUT" ]]; then
        printf '%s\n' "$1" >"$OUT"
        log "table written to $OUT"
    fi
}
