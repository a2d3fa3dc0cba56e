#!/usr/bin/env bash
# Profile-guided build of sluice: the release binary, optimised with a profile of its own hot path.
#
#   benches/pgo.sh            # -> target/pgo/release/sluice (or $CARGO_TARGET_DIR/pgo/release/sluice)
#
# Why: on this project's benchmarks the plain release build spends about as many instructions per
# request as NGINX and HAProxy but misses the 32 KiB instruction cache about twice as often (its hot
# path is spread over more code). With the profile, LLVM lays the hot code out together and keeps
# cold paths out of it: about a fifth fewer instructions and under a third of the instruction-cache
# misses per request (docs/BENCHMARKS.md, "Profile-guided build").
#
# Steps:
#   1. an instrumented release build (-Cprofile-generate) in $TARGET/pgo-train;
#   2. training: that binary serves the load comparison's four scenarios (benches/load/compare.sh:
#      HTTP/1.1 with one upstream, weighted 90/10 with sticky sessions and metrics, 100% mirroring,
#      h2c clients; sluice only, one short round) and the TLS handshake comparison (TLS 1.3 and 1.2,
#      full and resumed handshakes; benches/tls/compare.sh), and writes its counters when it exits;
#   3. llvm-profdata (rustup's llvm-tools, which matches rustc's LLVM) merges them;
#   4. the release build again with -Cprofile-use, in $TARGET/pgo.
# Paths the training does not run (an HTTP/2 upstream, the admin API, rollouts) are still compiled
# in, only laid out as cold code.
#
# Needs: rustup (installs llvm-tools when missing), and what the two comparison scripts need (they
# apt-get install nginx, wrk, h2load and openssl when missing, as root), two cores.
# Takes about ten minutes on two cores: two full release builds and about a minute of load. Each
# run trains and builds anew (a new profile, a full rebuild): to measure the result more than
# once, run this once, then `PGO=1 SKIP_BUILD=1 benches/load/compare.sh` or SLUICE_BIN.
#
# Environment:
#   CARGO_TARGET_DIR  honoured: everything goes under $CARGO_TARGET_DIR (default: the repo's target/)
#   RUSTFLAGS         kept: the profile flags are added to it (CARGO_ENCODED_RUSTFLAGS is refused)
#   TRAIN_DURATION    seconds per training run in each scenario (default 3)
# The training runs ignore the comparison scripts' own settings (SCENARIOS, OUT, ...) from the
# environment: the profile is always the same workload.
set -euo pipefail

BENCH_NAME=pgo
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TRAIN_DURATION=${TRAIN_DURATION:-3}
[[ "$TRAIN_DURATION" =~ ^[1-9][0-9]*$ ]] || die "TRAIN_DURATION must be a positive integer (seconds)"
[[ -z "${CARGO_ENCODED_RUSTFLAGS:-}" ]] || die "CARGO_ENCODED_RUSTFLAGS is set: it would override the profile flags"
# RUSTFLAGS is split on spaces: the profile paths must have none
[[ "$TARGET" != *[[:space:]]* ]] || die "the target dir ($TARGET) must not contain spaces"
TRAIN_TARGET=$TARGET/pgo-train
FINAL_TARGET=$TARGET/pgo
DATA=$TRAIN_TARGET/profiles

# llvm-profdata must read what rustc's LLVM writes: rustup's llvm-tools component ships the match
SYSROOT=$(rustc --print sysroot)
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata
if [[ ! -x "$PROFDATA" ]]; then
    command -v rustup >/dev/null 2>&1 || die "no llvm-profdata at $PROFDATA, and no rustup to install llvm-tools"
    log "installing rustup's llvm-tools (llvm-profdata)"
    rustup component add llvm-tools >/dev/null
fi
[[ -x "$PROFDATA" ]] || die "no llvm-profdata at $PROFDATA (rustup component add llvm-tools)"

log "1/4 instrumented build (target dir: $TRAIN_TARGET)"
(cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$DATA" CARGO_TARGET_DIR=$TRAIN_TARGET \
    cargo build --release --quiet --bin sluice)
# the build scripts were instrumented too and wrote their own profiles while building: not wanted
rm -rf "$DATA"
mkdir -p "$DATA"

log "2/4 training (the instrumented sluice under the load and TLS comparisons' scenarios)"
# the comparison scripts' settings that could change the workload, or where its report goes
unset_settings=(SCENARIO SCENARIOS PROXIES DURATION ROUNDS WARMUP CONNS H2_CONNS H2_STREAMS RATE
    RATE_DURATION RATE_WARMUP OUT KEEP_TMP SKIP_BUILD SLUICE_BIN SLUICE_B_BIN SLUICE_B_LABEL
    OPENLOOP_BIN NGINX_KEEPALIVE MIRROR_PERCENT SLUICE_B_MIRROR_PERCENT PGO CONCURRENCY
    TLS_VERSIONS MODES CLIENT_BIN LLVM_PROFILE_FILE)
train_env=()
for v in "${unset_settings[@]}"; do train_env+=(-u "$v"); done
env "${train_env[@]}" SLUICE_BIN="$TRAIN_TARGET/release/sluice" SCENARIOS="single weighted mirror h2" \
    PROXIES=sluice ROUNDS=1 WARMUP=0 RATE=0 DURATION="$TRAIN_DURATION" \
    "$REPO/benches/load/compare.sh" >"$TRAIN_TARGET/train-load.log" 2>&1 ||
    die "training run benches/load/compare.sh failed: see $TRAIN_TARGET/train-load.log"
env "${train_env[@]}" SLUICE_BIN="$TRAIN_TARGET/release/sluice" TLS_VERSIONS="1.3 1.2" \
    MODES="full resumed" ROUNDS=1 WARMUP=0 DURATION="$TRAIN_DURATION" \
    "$REPO/benches/tls/compare.sh" >"$TRAIN_TARGET/train-tls.log" 2>&1 ||
    die "training run benches/tls/compare.sh failed: see $TRAIN_TARGET/train-tls.log"
shopt -s nullglob
raw=("$DATA"/*.profraw)
((${#raw[@]})) || die "the training wrote no profiles to $DATA"

log "3/4 merging ${#raw[@]} profiles"
"$PROFDATA" merge -o "$DATA/merged.profdata" "${raw[@]}"
# named by its content: a new profile changes RUSTFLAGS, so cargo rebuilds every crate with it
sum=$(sha256sum "$DATA/merged.profdata" | cut -c1-16)
PROFILE=$FINAL_TARGET/sluice-$sum.profdata
mkdir -p "$FINAL_TARGET"
rm -f "$FINAL_TARGET"/sluice-*.profdata # earlier runs' profiles
cp "$DATA/merged.profdata" "$PROFILE"

log "4/4 optimised build with the profile (target dir: $FINAL_TARGET)"
(cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE" \
    CARGO_TARGET_DIR=$FINAL_TARGET cargo build --release --quiet --bin sluice)
log "done: $FINAL_TARGET/release/sluice (profile $PROFILE)"
