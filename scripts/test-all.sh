#!/usr/bin/env bash
# The whole edgevisor test suite, on a fresh machine: installs what the tests need from
# Debian, checks formatting and lints, then runs every test (unit tests, guests booted on this
# host's KVM, and real Linux guests booted inside a nested QEMU/KVM).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build --release (edgevisor)"
cargo build --release -p vmm --bin edgevisor
echo "== cargo test"
cargo test --workspace --release -- --test-threads=2
echo "== cargo fuzz (bounded)"
bash scripts/fuzz.sh
echo "== aarch64: whole workspace built for arm64, unit tests under qemu-user"
bash scripts/test-arm64.sh
