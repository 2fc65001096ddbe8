#!/usr/bin/env bash
# The library crate as crates.io would get it (issue #12, part 8):
#   1. the packaged file list holds only what a build needs (Cargo.toml's `include`);
#   2. `cargo publish --dry-run` packages it and builds it alone, from the packaged files and
#      the registry's dependencies, in target/package/ (nothing is uploaded).
# The member crates (cli, mesh, testing, bench) are `publish = false`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A working tree with changes is packaged as it stands (the dry run uploads nothing).
dirty=()
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    dirty=(--allow-dirty)
fi

list=$(cargo package -p darkrift-etcd --list "${dirty[@]}")
# Cargo adds Cargo.toml.orig (the manifest as written) and .cargo_vcs_info.json (the commit).
unexpected=$(grep -Ev '^(src/.*\.rs|proto/.*\.proto|build\.rs|Cargo\.toml|Cargo\.toml\.orig|Cargo\.lock|README\.md|LICENSE-MIT|LICENSE-APACHE|\.cargo_vcs_info\.json)$' <<<"$list" || true)
if [ -n "$unexpected" ]; then
    echo "package-check: files a build does not need are packaged:" >&2
    echo "$unexpected" >&2
    exit 1
fi
for needed in src/lib.rs build.rs proto/darkrift_etcd.proto LICENSE-MIT LICENSE-APACHE README.md; do
    grep -qx "$needed" <<<"$list" || {
        echo "package-check: $needed is missing from the package" >&2
        exit 1
    }
done
echo "package-check: $(wc -l <<<"$list") files packaged, all needed by a build"

cargo publish --dry-run -p darkrift-etcd "${dirty[@]}"
