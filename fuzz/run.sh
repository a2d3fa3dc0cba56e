#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_SECONDS each, one after the other, then
# prints each one's final libFuzzer stats: runs, coverage (cov), features (ft), corpus size.
# Exits 1 if any target crashed, timed out, ran out of memory or could not run.
#
#   fuzz/run.sh                        # all targets, 60 s each
#   FUZZ_SECONDS=300 fuzz/run.sh admin # one target, 5 minutes
#
# Environment: FUZZ_SECONDS (default 60), FUZZ_FLAGS (extra libFuzzer flags, e.g. "-max_len=8192"),
# FUZZ_SANITIZER (default address; "none" runs about twice as fast).
# Stable Rust is enough: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly flags.
# The corpus grows in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>); crashing inputs
# land in fuzz/artifacts/<target>/ and each run's log in fuzz/artifacts/<target>.log.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
export RUSTC_BOOTSTRAP=1
# The fuzz crate has its own target directory (fuzz/target): never the main crate's.
unset CARGO_TARGET_DIR
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
all=(config routing admin http1)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
echo "== building ${targets[*]} (release, sanitizer $sanitizer)"
for target in "${targets[@]}"; do
    cargo fuzz build -O -s "$sanitizer" "$target" || { echo "run.sh: build of $target failed" >&2; exit 2; }
done

failed=0
summary=()
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    log=fuzz/artifacts/$target.log
    args=("$corpus")
    [ -d "fuzz/seeds/$target" ] && args+=("fuzz/seeds/$target")
    flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "fuzz/$target.dict" ] && flags+=(-dict="fuzz/$target.dict")
    # shellcheck disable=SC2206
    flags+=(${FUZZ_FLAGS:-})
    echo "== $target: ${seconds}s (log: $log)"
    start=$(date +%s)
    # libFuzzer stops itself at -max_total_time; the outer timeout is a safety net only.
    timeout --kill-after=30 $((seconds + 120)) \
        cargo fuzz run -O -s "$sanitizer" "$target" "${args[@]}" -- "${flags[@]}" >"$log" 2>&1
    rc=$?
    elapsed=$(($(date +%s) - start))
    final=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|RELOAD|INITED)' "$log" | tail -n 1)
    runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
    [ -n "$runs" ] || runs=$(printf '%s' "$final" | grep -oE '^#[0-9]+' | tr -d '#')
    cov=$(printf '%s' "$final" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+')
    ft=$(printf '%s' "$final" | grep -oE 'ft: [0-9]+' | grep -oE '[0-9]+')
    corp=$(printf '%s' "$final" | grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' | cut -d' ' -f2)
    status=ok
    if [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"
        failed=1
        grep -E "panicked at|ERROR: libFuzzer|==ERROR|SUMMARY|Test unit written to" "$log" | head -n 6 | sed 's/^/    /'
        grep -qE "panicked at|ERROR: libFuzzer|==ERROR" "$log" || tail -n 5 "$log" | sed 's/^/    /'
    fi
    line=$(printf '%-8s %-18s %6ss  runs %-10s cov %-6s ft %-6s corpus %s' \
        "$target" "$status" "$elapsed" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    echo "$line"
    summary+=("$line")
done

echo "== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
printf '%s\n' "${summary[@]}"
exit "$failed"
