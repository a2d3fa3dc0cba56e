#!/usr/bin/env bash
# Load comparison: sluice vs NGINX as a reverse proxy in front of two nginx upstreams,
# optionally with a second sluice binary (A/B) measured in the same run.
# Method: shared/BASELINE.md (proxy pinned to core 0 with one worker; wrk and the upstreams
# pinned to core 1; interleaved rounds; medians; CPU time per request from /proc/PID/stat).
#
# Environment:
#   DURATION   seconds per measured wrk run (default 10)
#   ROUNDS     interleaved rounds per proxy (default 3)
#   WARMUP     seconds of warm-up per proxy before the rounds (default 2)
#   CONNS      wrk connections (default 64)
#   SCENARIO   weighted (90/10 over both upstreams, default) | single (one upstream)
#   OUT        also write the markdown table to this file
#   KEEP_TMP   1 = keep the temp dir (configs, logs, raw wrk output)
#   CARGO_TARGET_DIR  honoured for the sluice build (binary: $CARGO_TARGET_DIR/release/sluice)
#   SKIP_BUILD 1 = do not run cargo build (binary must already exist)
#   SLUICE_BIN      path to the sluice binary to test (default $CARGO_TARGET_DIR/release/sluice);
#                   when set, nothing is built
#   SLUICE_B_BIN    path to a second sluice binary (A/B): started with the same config on its own
#                   port and core, measured in every round after sluice, one more table row
#   SLUICE_B_LABEL  name of that second binary in the report (default "sluice B")
#   MIRROR_PERCENT          mirror this percent (0..100) of sluice's requests to a shadow version
#   SLUICE_B_MIRROR_PERCENT the same for the B instance (needs SLUICE_B_BIN)
#                   When either is set, one more nginx upstream (core 1, access log on) is the shadow;
#                   the report says how many requests it received per mirroring instance.
set -euo pipefail

BENCH_NAME=compare # log prefix [compare], temp dir /tmp/sluice-compare.XXXXXX
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
SCENARIO=${SCENARIO:-weighted}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
SLUICE_BIN=${SLUICE_BIN:-}
SLUICE_B_BIN=${SLUICE_B_BIN:-}
SLUICE_B_LABEL=${SLUICE_B_LABEL:-sluice B}
MIRROR_PERCENT=${MIRROR_PERCENT:-}
SLUICE_B_MIRROR_PERCENT=${SLUICE_B_MIRROR_PERCENT:-}
PROXY_CORE=0
LOAD_CORE=1

case "$SCENARIO" in weighted|single) ;; *) die "SCENARIO must be weighted or single" ;; esac
check_rounds_duration
check_bin SLUICE_BIN
check_bin SLUICE_B_BIN
[[ -n "$SLUICE_B_LABEL" ]] || die "SLUICE_B_LABEL must not be empty"
check_percent() { # NAME VALUE: empty, or a number 0..100 (decimals allowed, as sluice's percent is a float)
    [[ -z "$2" ]] && return 0
    [[ "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v p="$2" 'BEGIN { exit !(p <= 100) }' \
        || die "$1 must be a number from 0 to 100 (got '$2')"
}
check_percent MIRROR_PERCENT "$MIRROR_PERCENT"
check_percent SLUICE_B_MIRROR_PERCENT "$SLUICE_B_MIRROR_PERCENT"
[[ -z "$SLUICE_B_MIRROR_PERCENT" || -n "$SLUICE_B_BIN" ]] || die "SLUICE_B_MIRROR_PERCENT needs SLUICE_B_BIN"
MIRROR=0
[[ -n "$MIRROR_PERCENT" || -n "$SLUICE_B_MIRROR_PERCENT" ]] && MIRROR=1

# ---------------------------------------------------------------- cleanup (benches/lib.sh)
bench_start

# ---------------------------------------------------------------- tools
check_tools nginx wrk curl taskset:util-linux
WRK_VERSION=$( (wrk --version 2>&1 || true) | head -n1 | awk '{print $2}')
[[ -n "$WRK_VERSION" ]] || die "wrk --version gave no version"
log "nginx: $NGINX_VERSION, wrk: $WRK_VERSION"
check_cpus

# ---------------------------------------------------------------- build
build_sluice
SLUICE_B_REV=""
[[ -n "$SLUICE_B_BIN" ]] && SLUICE_B_REV="$SLUICE_B_BIN (sha256 $(bin_sha "$SLUICE_B_BIN"))"

# ---------------------------------------------------------------- helpers
# latency string from wrk (e.g. 812.00us, 1.23ms, 1.01s, 2.00m) -> milliseconds
to_ms() {
    awk -v s="$1" 'BEGIN {
        if (s == "") { print "?"; exit }
        n = s + 0; u = s; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}

# ---------------------------------------------------------------- upstreams
free_port; UP1=$PORT
free_port; UP2=$PORT
start_upstream up1 "$UP1" "up1"
start_upstream up2 "$UP2" "up2"
# shadow for mirroring: same as the others, but every request it gets is one line in its access log
SHADOW_PORT=""
SHADOW_LOG=$TMP/shadow.access.log
if ((MIRROR)); then
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

# ---------------------------------------------------------------- proxies
free_port; NGINX_PORT=$PORT
free_port; SLUICE_PORT=$PORT
SLUICE_B_PORT=""
if [[ -n "$SLUICE_B_BIN" ]]; then free_port; SLUICE_B_PORT=$PORT; fi

start_nginx_proxy() {
    local dir=$TMP/nginx-proxy servers
    if [[ $SCENARIO == weighted ]]; then
        servers="        server 127.0.0.1:$UP1 weight=9;
        server 127.0.0.1:$UP2 weight=1;"
    else
        servers="        server 127.0.0.1:$UP1;"
    fi
    write_nginx_proxy_conf "$dir" "127.0.0.1:$NGINX_PORT" "$servers"
    start_nginx "nginx proxy" "$dir" "$PROXY_CORE" "http://127.0.0.1:$NGINX_PORT/"
    NGINX_PID=$STARTED_PID
    log "nginx proxy on 127.0.0.1:$NGINX_PORT (pid $NGINX_PID, core $PROXY_CORE)"
}

# start_sluice NAME BINARY PORT TAG [MIRROR_PERCENT]: config $TMP/TAG.yaml, logs $TMP/TAG.log,
# sets STARTED_PID; with a percent, version "shadow" (weight 0) gets that share mirrored to it
start_sluice() {
    local name=$1 bin=$2 port=$3 tag=$4 mirror=${5:-} cfg=$TMP/$4.yaml versions routing mirror_cfg=""
    if [[ $SCENARIO == weighted ]]; then
        versions="      blue: { endpoints: [127.0.0.1:$UP1] }
      canary: { endpoints: [127.0.0.1:$UP2] }"
        routing="    routing: { weights: { blue: 90, canary: 10 } }"
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
    spawn_sluice "$name" "$bin" "$cfg" "$tag" "http://127.0.0.1:$port/"
    log "$name on 127.0.0.1:$port (pid $STARTED_PID, core $PROXY_CORE, $bin)"
}

start_nginx_proxy
start_sluice sluice "$SLUICE" "$SLUICE_PORT" sluice "$MIRROR_PERCENT"
SLUICE_PID=$STARTED_PID
SLUICE_B_PID=""
if [[ -n "$SLUICE_B_BIN" ]]; then
    start_sluice "$SLUICE_B_LABEL" "$SLUICE_B_BIN" "$SLUICE_B_PORT" sluice-b "$SLUICE_B_MIRROR_PERCENT"
    SLUICE_B_PID=$STARTED_PID
fi

# split sanity check: 200 requests on one connection each, count which upstream answered
split_check() {
    local name=$1 port=$2 urls=() i body n1 n2
    for i in $(seq 1 200); do urls+=("http://127.0.0.1:$port/"); done
    body=$(curl -s -m 20 "${urls[@]}" || true)
    n1=$(grep -c '^up1$' <<<"$body" || true)
    n2=$(grep -c '^up2$' <<<"$body" || true)
    log "split check $name: up1=$n1 up2=$n2 of 200"
    SPLIT[$name]="$n1/$n2"
}
declare -A SPLIT=()
split_check nginx "$NGINX_PORT"
split_check sluice "$SLUICE_PORT"
[[ -n "$SLUICE_B_BIN" ]] && split_check sluice-b "$SLUICE_B_PORT"

# ---------------------------------------------------------------- load
declare -A RPS=() CPU=() P99=() ERR=() RSS=()

# run_wrk LABEL URL DURATION PID(or empty) -> appends to result arrays for LABEL
run_wrk() {
    local label=$1 url=$2 dur=$3 pid=$4 out reqs rps p99 non2xx sockerr note
    out=$TMP/wrk.$label.$((${#RUNS_DONE[@]} + 1)).txt
    RUNS_DONE+=("$label")
    [[ -z "$pid" ]] || cpu_begin "$pid" "$label proxy"
    # in the background + wait, so that a signal interrupts the wait and the trap runs at once
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${dur}s" --latency "$url" >"$out" 2>&1 &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || die "wrk failed against $label: $(tail -n3 "$out")"
    LOADGEN_PID=""
    [[ -z "$pid" ]] || cpu_end "$pid" "$label proxy" "$label"
    reqs=$(awk '/ requests in / {print $1; exit}' "$out")
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2; exit}' "$out")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$out")
    sockerr=$(sed -n 's/^ *Socket errors: *//p' "$out" | head -n1)
    [[ -n "$reqs" && -n "$rps" ]] || die "cannot parse wrk output for $label: $out"
    note=""
    [[ -n "$non2xx" ]] && note+="non-2xx/3xx: $non2xx; "
    [[ -n "$sockerr" ]] && note+="socket errors: $sockerr; "
    if [[ -n "$pid" ]]; then
        CPU_US=$(cpu_us_per "$CPU_DELTA" "$reqs")
    else
        CPU_US="-"
    fi
    LAST_RPS=$rps LAST_P99=$p99 LAST_NOTE=$note LAST_REQS=$reqs
    [[ -n "$note" ]] && log "WARNING: $label: $note"
    return 0
}
RUNS_DONE=()

record() { # LABEL
    local l=$1
    RPS[$l]+="$LAST_RPS "
    CPU[$l]+="$CPU_US "
    P99[$l]+="$LAST_P99 "
    [[ -n "$LAST_NOTE" ]] && ERR[$l]+="$LAST_NOTE"
    return 0
}

log "warm-up: ${WARMUP}s each"
if ((WARMUP > 0)); then
    run_wrk direct "http://127.0.0.1:$UP1/" "$WARMUP" ""
    run_wrk nginx "http://127.0.0.1:$NGINX_PORT/" "$WARMUP" "$NGINX_PID"
    run_wrk sluice "http://127.0.0.1:$SLUICE_PORT/" "$WARMUP" "$SLUICE_PID"
    [[ -n "$SLUICE_B_BIN" ]] && run_wrk sluice-b "http://127.0.0.1:$SLUICE_B_PORT/" "$WARMUP" "$SLUICE_B_PID"
fi

log "direct reference run: ${DURATION}s"
run_wrk direct "http://127.0.0.1:$UP1/" "$DURATION" ""
record direct

PROXIES=(nginx sluice)
[[ -n "$SLUICE_B_BIN" ]] && PROXIES+=(sluice-b)
# mirror percent per proxy label (only for the instances that mirror), and what the shadow got from each:
# per measured run, the growth of the shadow's access log (settled) against wrk's request count
declare -A MIRROR_OF=() SHADOW_GOT=() SHADOW_SERVED=()
[[ -n "$MIRROR_PERCENT" ]] && MIRROR_OF[sluice]=$MIRROR_PERCENT
[[ -n "$SLUICE_B_MIRROR_PERCENT" ]] && MIRROR_OF[sluice-b]=$SLUICE_B_MIRROR_PERCENT
if ((MIRROR)); then
    shadow_settle
    log "shadow: $SHADOW_NOW requests before the measured rounds (start-up, split check, warm-up)"
fi
for r in $(seq 1 "$ROUNDS"); do
    for l in "${PROXIES[@]}"; do
        case $l in
            nginx) port=$NGINX_PORT pid=$NGINX_PID ;;
            sluice) port=$SLUICE_PORT pid=$SLUICE_PID ;;
            sluice-b) port=$SLUICE_B_PORT pid=$SLUICE_B_PID ;;
        esac
        shadow_note=""
        if [[ -n "${MIRROR_OF[$l]:-}" ]]; then
            shadow_settle
            shadow_before=$SHADOW_NOW
        fi
        run_wrk "$l" "http://127.0.0.1:$port/" "$DURATION" "$pid"
        record "$l"
        if [[ -n "${MIRROR_OF[$l]:-}" ]]; then
            shadow_settle
            SHADOW_GOT[$l]=$((${SHADOW_GOT[$l]:-0} + SHADOW_NOW - shadow_before))
            SHADOW_SERVED[$l]=$((${SHADOW_SERVED[$l]:-0} + LAST_REQS))
            shadow_note=", shadow got $((SHADOW_NOW - shadow_before))"
        fi
        log "round $r/$ROUNDS $l: $LAST_RPS req/s, $CPU_US CPU us/req, p99 $LAST_P99 ms ($LAST_REQS requests$shadow_note)"
    done
done

# shellcheck disable=SC2046
RSS[nginx]=$(hwm_kb $(proc_tree "$NGINX_PID"))
RSS[sluice]=$(hwm_kb "$SLUICE_PID")
[[ -n "$SLUICE_B_BIN" ]] && RSS[sluice-b]=$(hwm_kb "$SLUICE_B_PID")

SLUICE_WARN=$(count_warn "$TMP/sluice.log")
SLUICE_B_WARN=0
[[ -n "$SLUICE_B_BIN" ]] && SLUICE_B_WARN=$(count_warn "$TMP/sluice-b.log")

SHADOW_TOTAL=""
if ((MIRROR)); then
    shadow_settle
    SHADOW_TOTAL=$SHADOW_NOW
fi

# ---------------------------------------------------------------- report
fmt_rounds() { # LABEL
    local l=$1 rps cpu out="" i
    read -r -a rps <<<"${RPS[$l]}"
    read -r -a cpu <<<"${CPU[$l]}"
    for i in "${!rps[@]}"; do
        [[ -n "$out" ]] && out+=", "
        if [[ "${cpu[$i]}" == "-" ]]; then out+="${rps[$i]}"; else out+="${rps[$i]} / ${cpu[$i]}"; fi
    done
    echo "$out"
}
row() { # LABEL NAME
    local l=$1 name=$2 cpu rss errs
    # shellcheck disable=SC2086
    if [[ $l == direct ]]; then cpu="-"; else cpu=$(median ${CPU[$l]}); fi
    if [[ -n "${RSS[$l]:-}" ]]; then rss=$(kb_to_mb "${RSS[$l]}"); else rss="-"; fi
    errs=${ERR[$l]:-none}
    errs=${errs%; }
    # shellcheck disable=SC2086
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$(median ${RPS[$l]})" "$cpu" \
        "$(median ${P99[$l]})" "$rss" "$(fmt_rounds "$l")" "$errs"
}

# rel_diff A B: relative difference (A - B) / B in percent, signed with + or U+2212
rel_diff() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) { print "?"; exit }
        d = (a - b) / b * 100
        s = sprintf("%.1f", d < 0 ? -d : d)
        printf "%s%s%%", (d < 0 && s + 0 > 0) ? "\342\210\222" : "+", s }'
}

# mirror_tag LABEL: " (mirror P%)" / " (no mirror)" when mirroring is in the run, else nothing
mirror_tag() {
    ((MIRROR)) || return 0
    if [[ -n "${MIRROR_OF[$1]:-}" ]]; then echo " (mirror ${MIRROR_OF[$1]}%)"; else echo " (no mirror)"; fi
}
TABLE=$(
    echo "### sluice$(mirror_tag sluice) vs NGINX$([[ -n "$SLUICE_B_BIN" ]] && echo " vs $SLUICE_B_LABEL$(mirror_tag sluice-b)"), scenario: $SCENARIO ($([[ $SCENARIO == weighted ]] && echo '90/10 over two upstreams' || echo 'one upstream'))"
    echo
    if ((MIRROR)); then
        echo "Mirroring: sluice ${MIRROR_PERCENT:-none}$([[ -n "$MIRROR_PERCENT" ]] && echo %)$([[ -n "$SLUICE_B_BIN" ]] && echo ", $SLUICE_B_LABEL ${SLUICE_B_MIRROR_PERCENT:-none}$([[ -n "$SLUICE_B_MIRROR_PERCENT" ]] && echo %)") of requests copied to version \`shadow\` (weight 0), one more nginx \`return 200\` upstream on core $LOAD_CORE."
        echo
    fi
    echo "wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS interleaved round(s), medians; proxy on core $PROXY_CORE, wrk + upstreams on core $LOAD_CORE."
    echo "nginx $NGINX_VERSION, wrk $WRK_VERSION, sluice $SLUICE_REV, $(date -u +%Y-%m-%dT%H:%MZ), CLK_TCK=$CLK_TCK."
    [[ -n "$SLUICE_B_BIN" ]] && echo "$SLUICE_B_LABEL: $SLUICE_B_REV."
    echo
    echo "| proxy | req/s | CPU µs/request | p99 ms | peak RSS MB | rounds (req/s / CPU µs/req) | errors |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    row nginx "NGINX (proxy)"
    row sluice "sluice"
    [[ -n "$SLUICE_B_BIN" ]] && row sluice-b "$SLUICE_B_LABEL"
    row direct "direct to upstream (reference)"
    echo
    if [[ -n "$SLUICE_B_BIN" ]]; then
        # shellcheck disable=SC2086
        echo "sluice vs $SLUICE_B_LABEL: CPU µs/request $(rel_diff "$(median ${CPU[sluice]})" "$(median ${CPU[sluice-b]})"), req/s $(rel_diff "$(median ${RPS[sluice]})" "$(median ${RPS[sluice-b]})")"
        echo
        echo "Split check (200 requests, up1/up2): NGINX ${SPLIT[nginx]}, sluice ${SPLIT[sluice]}, $SLUICE_B_LABEL ${SPLIT[sluice-b]}. Log WARN/ERROR lines: sluice $SLUICE_WARN, $SLUICE_B_LABEL $SLUICE_B_WARN."
    else
        echo "Split check (200 requests, up1/up2): NGINX ${SPLIT[nginx]}, sluice ${SPLIT[sluice]}. sluice log WARN/ERROR lines: $SLUICE_WARN."
    fi
    echo "NGINX peak RSS is the sum over master and worker."
    if ((MIRROR)); then
        echo
        for l in sluice sluice-b; do
            [[ -n "${MIRROR_OF[$l]:-}" ]] || continue
            name=sluice; [[ $l == sluice-b ]] && name=$SLUICE_B_LABEL
            echo "shadow received ${SHADOW_GOT[$l]} requests (instance with ${MIRROR_OF[$l]}% mirroring served ${SHADOW_SERVED[$l]}): $name, measured rounds, $(awk -v g="${SHADOW_GOT[$l]}" -v s="${SHADOW_SERVED[$l]}" 'BEGIN { if (s > 0) printf "%.1f%%", g / s * 100; else print "?" }') of its requests."
        done
        echo "Shadow access log over the whole run (start-up, split check and warm-up included): $SHADOW_TOTAL lines."
    fi
)

print_table "$TABLE"
show_warn sluice "$TMP/sluice.log" "$SLUICE_WARN"
show_warn "$SLUICE_B_LABEL" "$TMP/sluice-b.log" "$SLUICE_B_WARN"
