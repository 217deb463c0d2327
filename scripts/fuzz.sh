#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a bounded time:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 20; with no TARGET, every target runs, one
# after the other. Installs cargo-fuzz if it is missing; runs libFuzzer on
# the stable toolchain (RUSTC_BOOTSTRAP=1). The build goes to
# $KEYCARD_CI_CACHE/fuzz-target (default ~/.cache/keycard-ci/fuzz-target)
# so that a warm run only fuzzes; each target's corpus grows in
# $KEYCARD_FUZZ_CORPUS/<target> (default fuzz/corpus, out of git) and
# starts from fuzz/inputs/<target> and fuzz/regressions/<target>.
# A crash, a failed property, a timeout (10 s for one input) or an input
# using more than 2 GiB fails the run (after every target ran); libFuzzer
# leaves the input in fuzz/artifacts/<target>/, and it belongs in
# fuzz/regressions/<target>/ once fixed (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
shift || true
case $secs in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
    ;;
esac

cache=${KEYCARD_CI_CACHE:-$HOME/.cache/keycard-ci}
target_dir=$cache/fuzz-target
corpus=${KEYCARD_FUZZ_CORPUS:-fuzz/corpus}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building the fuzz targets (target dir $target_dir)"
started=$SECONDS
cargo fuzz build --target-dir "$target_dir"
echo "built in $((SECONDS - started)) s"

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

failed=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$corpus/$t"
    dirs=("$corpus/$t")
    for d in fuzz/inputs/$t fuzz/regressions/$t; do
        if [ -d "$d" ]; then dirs+=("$d"); fi
    done
    echo "== fuzz $t for ${secs} s"
    set +e
    cargo fuzz run --target-dir "$target_dir" "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing passed: ${targets[*]} (${secs} s each)"
