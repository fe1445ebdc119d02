#!/usr/bin/env bash
# Builds every cargo-fuzz target (devices/fuzz: virtio queue, net TX, block, MMIO transport;
# images/fuzz: kernel image parsing) and runs each for a bounded time, FUZZ_SECONDS each
# (default 30). Exits non-zero when a target crashes, panics, hangs (10 s per input) or
# runs out of memory, and prints the command that reproduces it (the target binary run on
# the crash file; `cd devices && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` works too).
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take the -Z flags
# cargo-fuzz passes (AddressSanitizer, coverage instrumentation). Targets are built in
# release with debug assertions (-O -a), so integer overflow panics too. Run as root: the
# net TX target creates its TAP in a private network namespace (unshare(CLONE_NEWNET)).
#
# Corpora grow under target/fuzz/runs/<target>/corpus (kept between runs); the committed
# seeds in <crate>/fuzz/corpus/<target>/ are read too.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
export RUSTC_BOOTSTRAP=1
# One target directory for both crates: they share libFuzzer and most dependencies.
target_dir="$PWD/target/fuzz"
runs="$target_dir/runs"
triple="$(rustc -vV | sed -n 's/^host: //p')"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed; installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

failed=()
summary=()

# fuzz_crate <dir holding fuzz/>
fuzz_crate() {
    local crate="$1"
    echo "-- building the fuzz targets of $crate/fuzz"
    # Outside the workspace, so the root `cargo fmt --all` does not see it.
    (cd "$crate/fuzz" && cargo fmt --check)
    (cd "$crate" && cargo fuzz build -O -a --target-dir "$target_dir")
    local t
    for t in $(cd "$crate" && cargo fuzz list); do
        local bin="$target_dir/$triple/release/$t"
        local dir="$runs/$t"
        rm -rf "$dir/artifacts"
        mkdir -p "$dir/corpus" "$dir/artifacts"
        local seeds=()
        if [ -d "$crate/fuzz/corpus/$t" ]; then
            seeds=("$crate/fuzz/corpus/$t")
        fi
        echo "-- $t: fuzzing for ${FUZZ_SECONDS}s"
        local rc=0
        # The outer timeout only guards against libFuzzer itself wedging.
        timeout --kill-after=10 $((FUZZ_SECONDS + 120)) "$bin" \
            -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
            "$dir/corpus" "${seeds[@]}" >"$dir/log" 2>&1 || rc=$?
        local execs per_sec
        execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)"
        per_sec="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -1)"
        local crashes
        crashes="$(find "$dir/artifacts" -type f | sort)"
        if [ "$rc" -ne 0 ] || [ -n "$crashes" ]; then
            echo "FAIL: $t (exit status $rc); libFuzzer's report:"
            grep -E "panicked at|ERROR: |SUMMARY: |^assertion|^status " "$dir/log" | head -20 || true
            echo "   full log: $dir/log"
            for f in $crashes; do
                echo "   reproduce: $bin $f"
            done
            failed+=("$t")
        else
            summary+=("$(printf '%-16s %10s execs  %6s exec/s' "$t" "${execs:-?}" "${per_sec:-?}")")
        fi
    done
}

fuzz_crate devices
fuzz_crate images

echo "-- fuzzed ${FUZZ_SECONDS}s per target:"
for line in "${summary[@]}"; do
    echo "   $line"
done
if [ "${#failed[@]}" -ne 0 ]; then
    echo "FAILED fuzz targets: ${failed[*]}" >&2
    exit 1
fi
