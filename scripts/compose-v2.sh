#!/usr/bin/env bash
# Prints the command of a Compose v2 (`docker compose`): the Docker CLI plugin when it is
# installed, otherwise the docker-compose 2.x binary of Debian 13's package (Debian 12, the
# machines' system, ships only docker-compose 1.29, and Docker's own apt repository is not
# reachable from them). The package is fetched with apt-get from Debian's archive into a
# private cache, without touching the system's apt sources or installed packages:
#
#   ${XDG_CACHE_HOME:-~/.cache}/darkrift-etcd/compose-v2/   (lists, the .deb, the binary)
#
# Exit 1 with the reason on stderr when no Compose v2 can be had.
set -euo pipefail

if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
    exit 0
fi

dir="${XDG_CACHE_HOME:-$HOME/.cache}/darkrift-etcd/compose-v2"
bin="$dir/root/usr/bin/docker-compose"
if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q 'version v\?2\.'; then
    echo "$bin"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || { echo "compose-v2: no apt-get to fetch Debian's docker-compose 2.x" >&2; exit 1; }
mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/deb"
echo "deb http://deb.debian.org/debian trixie main" >"$dir/sources.list"
apt=(apt-get -q
    -o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
echo "compose-v2: fetching Debian 13's docker-compose package into $dir" >&2
"${apt[@]}" update >"$dir/apt.log" 2>&1 || { tail -n 5 "$dir/apt.log" >&2; echo "compose-v2: apt-get update failed" >&2; exit 1; }
rm -f "$dir"/deb/*.deb
(cd "$dir/deb" && "${apt[@]}" download docker-compose >>"$dir/apt.log" 2>&1) \
    || { tail -n 5 "$dir/apt.log" >&2; echo "compose-v2: apt-get download docker-compose failed" >&2; exit 1; }
rm -rf "$dir/root"
dpkg-deb -x "$dir"/deb/docker-compose_*.deb "$dir/root"
"$bin" version 2>/dev/null | grep -q 'version v\?2\.' \
    || { echo "compose-v2: $bin is not a Compose v2: $("$bin" version 2>&1 | head -n 1)" >&2; exit 1; }
echo "$bin"
