#!/usr/bin/env bash
# What mirroring 100% of traffic costs the primary path (issue 5, SPEC "Performance": at most 25% of
# its throughput), measured where sluice is the bottleneck.
#
# Two sluice instances of the same binary, alike but for `mirror: [{ version: shadow, percent: P }]`
# (P = 0 and 100), each pinned to core 0 and, by default, held to CPU_PERCENT of that core by a
# cgroup (cpu.cfs_quota_us; cgroup v1 cpu controller at /sys/fs/cgroup/cpu, needs root). The primary
# and shadow upstreams (nginx, `return 200`) and wrk run on core 1. Without the quota, sluice idles
# at half a core and the closed-loop rate only shows how fast core 1 can also serve the copies: the
# shadow nginx shares core 1 with wrk and the primary. With it, the rate is sluice's own: whatever
# the copies cost sluice comes off the primary's throughput. Rounds alternate the two instances.
#
#   benches/load/mirror-cost.sh                    # builds target/release/sluice first
#   SLUICE_BIN=target/release/sluice ROUNDS=5 DURATION=10 CPU_PERCENT=35 benches/load/mirror-cost.sh
#   CPU_PERCENT=0 benches/load/mirror-cost.sh      # no quota (core 1 is then the bottleneck)
#
# Environment: ROUNDS (5), DURATION (10 s per run), WARMUP (2 s), CONNS (wrk connections, 64),
# CPU_PERCENT (35; 0 = no quota), MAX_IN_FLIGHT (the mirror's max_in_flight, 1024: the quota stalls
# sluice for up to 6.5 ms of every 10, and with the default 64 copies would be dropped, which
# would understate the cost), OUT (also write the
# report here), KEEP_TMP, SKIP_BUILD / SLUICE_BIN / CARGO_TARGET_DIR (see benches/lib.sh).
set -euo pipefail

BENCH_NAME=mirror-cost
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
CPU_PERCENT=${CPU_PERCENT:-35}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-1024}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
SLUICE_BIN=${SLUICE_BIN:-}
PROXY_CORE=0
LOAD_CORE=1
check_rounds_duration
[[ "$CPU_PERCENT" =~ ^[0-9]+$ ]] && ((CPU_PERCENT <= 100)) || die "CPU_PERCENT must be 0..100"
check_bin SLUICE_BIN
check_tools nginx wrk
check_cpus
bench_start

CGROUPS=()
remove_cgroups() {
    local g
    for g in "${CGROUPS[@]}"; do rmdir "$g" 2>/dev/null || log "could not remove cgroup $g"; done
}
trap 'remove_cgroups_after_cleanup' EXIT
remove_cgroups_after_cleanup() {
    # cleanup (benches/lib.sh) stops the processes and exits; the cgroups go once they are empty
    trap - EXIT
    (cleanup) || true
    remove_cgroups
}

build_sluice
BIN=$SLUICE
log "sluice: $SLUICE_REV"

free_port; PRIMARY_PORT=$PORT
free_port; SHADOW_PORT=$PORT
start_upstream primary "$PRIMARY_PORT" primary
# The shadow counts what it serves with stub_status rather than an access log, so that no log
# grows on core 1 while the rounds run.
free_port; SHADOW_STATUS_PORT=$PORT
write_nginx_conf "$TMP/shadow" "$(cat <<EOF
    server {
        listen 127.0.0.1:$SHADOW_PORT reuseport backlog=4096;
        location / { default_type text/plain; return 200 "shadow\n"; }
    }
    server {
        listen 127.0.0.1:$SHADOW_STATUS_PORT;
        location = /status { stub_status; }
    }
EOF
)"
start_nginx shadow "$TMP/shadow" "$LOAD_CORE" "http://127.0.0.1:$SHADOW_PORT/"
log "shadow nginx on 127.0.0.1:$SHADOW_PORT (pid $STARTED_PID, core $LOAD_CORE), requests counted at :$SHADOW_STATUS_PORT/status"

declare -A PID URL
for percent in 0 100; do
    free_port; port=$PORT
    cat >"$TMP/mirror-$percent.yaml" <<EOF
workers: 1
listeners: [{ name: bench, address: 127.0.0.1:$port }]
services:
  - name: bench
    versions:
      primary: { endpoints: [127.0.0.1:$PRIMARY_PORT] }
      shadow: { endpoints: [127.0.0.1:$SHADOW_PORT] }
    routing: { weights: { primary: 100 } }
    mirror: [{ version: shadow, percent: $percent, max_in_flight: $MAX_IN_FLIGHT }]
EOF
    URL[$percent]="http://127.0.0.1:$port/"
    spawn_sluice "sluice mirror $percent%" "$BIN" "$TMP/mirror-$percent.yaml" "mirror-$percent" "${URL[$percent]}"
    PID[$percent]=$STARTED_PID
    if ((CPU_PERCENT > 0)); then
        group=/sys/fs/cgroup/cpu/sluice-mirror-cost-$$-$percent
        mkdir "$group" 2>/dev/null || die "cannot make cgroup $group (cgroup v1 cpu controller, root); CPU_PERCENT=0 runs without a quota"
        CGROUPS+=("$group")
        echo 10000 >"$group/cpu.cfs_period_us"
        echo $((CPU_PERCENT * 100)) >"$group/cpu.cfs_quota_us"
        # every thread of the process
        for task in /proc/"${PID[$percent]}"/task/*; do echo "${task##*/}" >"$group/tasks"; done
    fi
    log "sluice mirror $percent% on ${URL[$percent]} (pid ${PID[$percent]}, core $PROXY_CORE, CPU quota ${CPU_PERCENT:-0}%)"
done

# Requests the shadow has served (stub_status counts each status request too: one per call).
shadow_lines() { curl -s "http://127.0.0.1:$SHADOW_STATUS_PORT/status" | awk 'NR == 3 { print $3 }'; }

declare -A RPS CPU GOT
run() { # run PERCENT ROUND
    local percent=$1 round=$2 before after n rps
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${URL[$percent]}" >/dev/null
    before=$(shadow_lines)
    cpu_begin "${PID[$percent]}" "sluice"
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${URL[$percent]}" >"$TMP/wrk-$percent-$round.txt" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID"
    LOADGEN_PID=""
    cpu_end "${PID[$percent]}" "sluice" "mirror $percent%"
    # the copies of the last requests may still be on their way
    sleep 0.5
    after=$(($(shadow_lines) - 1))
    n=$(awk '/requests in/ {print $1}' "$TMP/wrk-$percent-$round.txt")
    grep -q "Non-2xx\|Socket errors" "$TMP/wrk-$percent-$round.txt" && log "WARNING: errors in round $round ($percent%): $(grep -E 'Non-2xx|Socket errors' "$TMP/wrk-$percent-$round.txt")"
    rps=$(awk -v n="$n" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')
    RPS[$percent]+="$rps "
    CPU[$percent]+="$(cpu_us_per "$CPU_DELTA" "$n") "
    GOT[$percent]+="$(awk -v a="$((after - before))" -v n="$n" 'BEGIN { printf "%.1f", 100 * a / n }') "
    log "round $round, mirror $percent%: $rps req/s, $(cpu_us_per "$CPU_DELTA" "$n") CPU µs/request, shadow got $((after - before)) of $n"
}

for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then order="0 100"; else order="100 0"; fi
    for percent in $order; do run "$percent" "$round"; done
done

range() { # "a b c" → "median (min–max)"
    local values=($1)
    printf '%s (%s–%s)' "$(median "${values[@]}")" \
        "$(printf '%s\n' "${values[@]}" | sort -g | head -n1)" "$(printf '%s\n' "${values[@]}" | sort -g | tail -n1)"
}
m0=$(median ${RPS[0]})
m100=$(median ${RPS[100]})
cost=$(awk -v a="$m0" -v b="$m100" 'BEGIN { printf "%.1f", 100 * (1 - b / a) }')
c0=$(median ${CPU[0]})
c100=$(median ${CPU[100]})
extra=$(awk -v a="$c0" -v b="$c100" 'BEGIN { printf "%.1f", 100 * (b / a - 1) }')
quota="sluice held to ${CPU_PERCENT}% of core $PROXY_CORE by a CPU quota"
((CPU_PERCENT > 0)) || quota="no CPU quota"
table="Mirroring 0% vs 100%: $ROUNDS rounds of ${DURATION} s, wrk -c$CONNS, $quota, upstreams and wrk on core $LOAD_CORE, max_in_flight $MAX_IN_FLIGHT, $(date -u +%Y-%m-%d), sluice $SLUICE_REV, nginx $NGINX_VERSION

| mirror | req/s | CPU µs/request | shadow received |
| --- | --- | --- | --- |
| 0% | $(range "${RPS[0]}") | $(range "${CPU[0]}") | - |
| 100% | $(range "${RPS[100]}") | $(range "${CPU[100]}") | $(range "${GOT[100]}")% |

100% mirroring costs $cost% of the throughput (medians) and $extra% more CPU per request.
Rounds (req/s): 0%: ${RPS[0]}; 100%: ${RPS[100]}"
print_table "$table"
