#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ for a bounded time and prints what it did:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 60 s each, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`, from crates.io) and a C++ compiler
# (libfuzzer-sys builds libFuzzer). Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets
# stable rustc accept the -Z flags cargo-fuzz passes (sanitizer, coverage instrumentation).
# FUZZ_SANITIZER picks the sanitizer (default `address`; `none` builds faster and runs
# several times more executions per second).
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/) and grows a working
# corpus in fuzz/corpus-run/<target>/ (git-ignored). A crash stops the script with a non-zero
# exit; the input that crashed is saved under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
shift || true
case "$seconds" in
    ''|*[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
sanitizer=${FUZZ_SANITIZER:-address}

command -v cargo-fuzz >/dev/null 2>&1 || {
    echo "fuzz: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 1
}
export RUSTC_BOOTSTRAP=1

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "fuzz: building ${targets[*]} (sanitizer: $sanitizer)" >&2
if [ "$#" -gt 0 ]; then
    for target in "${targets[@]}"; do
        cargo fuzz build -O --sanitizer "$sanitizer" "$target" >&2
    done
else
    cargo fuzz build -O --sanitizer "$sanitizer" >&2
fi

summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus-run/$target"
    log="fuzz/corpus-run/$target.log"
    echo "fuzz: running $target for ${seconds}s" >&2
    # The working corpus comes first: libFuzzer writes new inputs there, never to the seeds.
    if ! cargo fuzz run -O --sanitizer "$sanitizer" "$target" \
        "fuzz/corpus-run/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target FAILED (log: $log, input: fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' "$log" | tail -n 1)
    summary+=("$(printf '%-12s %6ss %12s execs %8s/s  %s' "$target" "$seconds" \
        "$(stat number_of_executed_units)" "$(stat average_exec_per_sec)" "$cov")")
done

echo
echo "fuzz: no crash (sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
