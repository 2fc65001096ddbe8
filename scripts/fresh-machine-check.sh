#!/usr/bin/env bash
# Pre-release check (not run by CI; it takes long): README's two set-up commands, unchanged,
# on a fresh Debian 12 machine.
#
#   scripts/fresh-machine-check.sh [REV]     (default: HEAD)
#
# The machine is a container made from a bare Debian 12 rootfs (debootstrap --variant=minbase,
# `docker import`ed: scripts/docker-images.sh base) holding nothing but what README says a user
# brings: this host's Rust toolchain (~/.rustup and ~/.cargo/bin, mounted read-only), root, and
# the repository at REV (`git archive`, as a clone would have it). It reaches the package
# registries (apt, PyPI, crates.io) through Docker's default bridge network, and runs, timing
# each:
#
#   bash scripts/demo.sh
#   bash scripts/test.sh
#
# with DARKRIFT_SKIP_DOCKER=1 (no Docker engine inside; the Docker tests say they skipped).
#
# A network that intercepts TLS (as the one this project's machines are on does) needs its CA
# trusted: FRESH_MACHINE_CA_FILE (default: the host's SSL_CERT_FILE, when set) is mounted
# read-only and named by SSL_CERT_FILE, PIP_CERT and CARGO_HTTP_CAINFO; FRESH_MACHINE_CA_FILE=
# (empty) passes nothing. Nothing else of the host reaches the container.
# Prints each command's exit code and duration; exits non-zero if either failed or ran longer
# than FRESH_MACHINE_TIMEOUT seconds (default 5400; exit 124), or if Docker's disk has less than
# FRESH_MACHINE_MIN_FREE_GB free (default 8). The container
# is removed on exit; its full output is kept in /tmp/darkrift-fresh-machine.<pid>.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rev=${1:-HEAD}
log() { echo "fresh-machine-check: $*" >&2; }
die() { echo "fresh-machine-check: FAIL: $*" >&2; exit 1; }

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers"
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[ -d "$rustup_home" ] && [ -x "$cargo_bin/cargo" ] || die "no rustup toolchain at $rustup_home and $cargo_bin"
toolchain=$(rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)

ca_file=${FRESH_MACHINE_CA_FILE-${SSL_CERT_FILE:-}}
ca_args=()
if [ -n "$ca_file" ]; then
    [ -r "$ca_file" ] || die "FRESH_MACHINE_CA_FILE=$ca_file is not readable"
    ca_args=(-v "$ca_file:/etc/darkrift-network-ca.pem:ro"
        -e SSL_CERT_FILE=/etc/darkrift-network-ca.pem
        -e PIP_CERT=/etc/darkrift-network-ca.pem
        -e CARGO_HTTP_CAINFO=/etc/darkrift-network-ca.pem)
    log "TLS: trusting the CA bundle $ca_file (the network's), mounted read-only"
fi

# The two commands build the crate twice (release for the demo, debug with every test target)
# inside the container: about 7 GB on Docker's disk.
need_gb=${FRESH_MACHINE_MIN_FREE_GB:-8}
root_dir=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
free_gb=$(df -P -BG "$root_dir" | awk 'NR==2 {sub("G", "", $4); print $4}')
[ "$free_gb" -ge "$need_gb" ] \
    || die "only ${free_gb} GB free under $root_dir, the check needs about $need_gb (FRESH_MACHINE_MIN_FREE_GB)"

base=$(bash scripts/docker-images.sh base)
name="darkrift-fresh-$$"
out="/tmp/darkrift-fresh-machine.$$.log"
cleanup() {
    local rc=$?
    docker rm -f "$name" >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "container $name from $base, $rev of the repository, toolchain $toolchain; output in $out"
docker run -d --name "$name" --network bridge \
    -v "$rustup_home:/root/.rustup:ro" -v "$cargo_bin:/root/.cargo/bin:ro" \
    -e RUSTUP_HOME=/root/.rustup -e CARGO_HOME=/root/.cargo \
    -e RUSTUP_TOOLCHAIN="$toolchain" \
    -e PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    -e DARKRIFT_SKIP_DOCKER=1 "${ca_args[@]}" \
    "$base" sleep infinity >/dev/null
docker exec "$name" mkdir -p /root/darkrift-etcd
git archive --format=tar "$rev" | docker exec -i "$name" tar -x -C /root/darkrift-etcd

status=0
summary=()
for cmd in "bash scripts/demo.sh" "bash scripts/test.sh"; do
    log "running: $cmd"
    start=$(date +%s)
    rc=0
    # Bounded: a command that hangs (as demo.sh did when `kill` was missing) fails the check.
    timeout "${FRESH_MACHINE_TIMEOUT:-5400}" docker exec -w /root/darkrift-etcd "$name" $cmd >>"$out" 2>&1 || rc=$?
    took=$(($(date +%s) - start))
    summary+=("$(printf '%-22s exit %d after %dm%02ds' "$cmd" "$rc" $((took / 60)) $((took % 60)))")
    log "${summary[-1]}"
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$out" >&2
        status=1
        break
    fi
done
echo "fresh-machine-check: Debian $(docker exec "$name" cat /etc/debian_version) (debootstrap minbase), toolchain $toolchain"
printf 'fresh-machine-check: %s\n' "${summary[@]}"
[ "$status" -eq 0 ] && echo "fresh-machine-check: OK" || echo "fresh-machine-check: FAILED (log: $out)"
exit "$status"
