#!/usr/bin/env bash
# Counts the names a library user can import from darkrift-etcd (modules, types, traits, free
# functions, constants, statics, type aliases; not methods, fields or variants), as rustdoc
# lists them for the library built without the hidden internals feature, and fails when the
# count exceeds the ceiling below. Growth of the public API is a decision: raise the ceiling in
# the commit that adds a name, and say why there. The goal is one screen (about 60 names).
#
#   api-count.sh          check (scripts/test.sh runs it)
#   api-count.sh --list   print every name, one a line
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The count on 2026-12-07 (commit "api-count"): 114 items in 18 modules.
CEILING=132

target=${CARGO_TARGET_DIR:-target}
cargo doc --no-deps -p darkrift-etcd --quiet
python3 - "$target/doc/darkrift_etcd" "$CEILING" "${1:-}" <<'PY'
import os, re, sys
root, ceiling, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(os.path.join(root, "all.html"), encoding="utf-8") as f:
    items = re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', f.read())
modules = sorted(
    os.path.relpath(d, root).replace(os.sep, "::")
    for d, _, files in os.walk(root)
    if "index.html" in files and os.path.relpath(d, root) != "."
)
names = sorted(modules) + sorted(name for _, name in items)
if mode == "--list":
    print("\n".join(names))
count = len(names)
print(f"api-count: {count} public names ({len(modules)} modules, {len(items)} items); ceiling {ceiling}")
if count > ceiling:
    print(f"api-count: the public API grew past {ceiling}: make it a decision (scripts/api-count.sh)", file=sys.stderr)
    sys.exit(1)
PY
