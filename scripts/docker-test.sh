#!/usr/bin/env bash
# compose/ on a real Docker engine: the users' compose file (with docker-compose.test.yml for
# images built here without a registry, see scripts/docker-images.sh) and five scenarios, each
# printing what it measured:
#
#   1. ids        README's id-allocation command (12 `register` replicas, check-ids exits 0),
#                 then scaled to 30, 5 and 20: ids unique at every step (the CLI's `ls`, etcd's
#                 records and the containers agree); round-robin: every registration after
#                 scaling up takes a position ahead of the allocation cursor, so a freed id
#                 comes back only after the cursor has walked the whole id space
#   2. mesh       every lobby links to every game; SIGKILL of a game: every lobby drops it
#                 within TTL + 1.5 s; `docker stop` of a lobby: its leave is seen at once;
#                 restarted containers register again and link
#   3. etcd       one member stopped (no leave; a server restarts, registers and links), the
#                 leader's container killed (no leave), all three members restarted within the
#                 TTL (no leave)
#   4. partition  a game cut off the etcd network for longer than its TTL: peers see it leave;
#                 reconnected, it comes back with the same id and its own view catches up
#   5. darkrift   real DarkRift 2 servers (profile `darkrift`, image darkrift-server:demo from
#                 compose/darkrift.Dockerfile), the plugin's child agent inside each container:
#                 2 lobbies link to 2 games; SIGKILL of a game: every lobby logs its leave;
#                 `docker pause` of a game (agent frozen too): the leave after the TTL, and
#                 after `docker unpause` the same id joins and links again; the child agents of
#                 a lobby and a game killed inside their containers: the plugin restarts them and
#                 resumes, the same ids, no leave; `docker stop` of a game: exit 0, leave at once
#
#   scripts/docker-test.sh [SCENARIO...]      (default: all five, in this order)
#
# Needs a Docker engine and docker-compose 1.29 or Compose v2. With Compose v2's plugin
# installed, it runs every scenario; with only Debian 12's docker-compose 1.29, every scenario
# on 1.29, then ids and mesh (the ones that exercise compose itself) on Compose v2 fetched by
# scripts/compose-v2.sh (Debian 13's package; skipped with a message if it cannot be had).
# DARKRIFT_COMPOSE="docker-compose" (or any compose command line) runs that one alone. Fails
# when no engine answers; DARKRIFT_SKIP_DOCKER=1 skips the whole suite with a message instead
# (for machines that cannot run containers, such as scripts/fresh-machine-check.sh's
# container).
#
# The darkrift scenario needs mcs (mono-devel) and DarkRift 2.11 (darkrift/build.sh) on the host
# to build its image; without them it is skipped with a message, except with CI=true, where it
# fails. `scripts/docker-test.sh darkrift` (with DARKRIFT_COMPOSE=docker-compose for one compose
# tool) runs it alone.
#
# Everything a run creates (containers, networks, volumes of the projects darkrift-test-<pid>-N,
# and the app and darkrift image tags) is removed on exit, failure and interrupt included. The base and etcd
# images are a per-machine cache, tagged by content (`scripts/docker-images.sh clean` removes
# them); DARKRIFT_DOCKER_KEEP=1 keeps the run's containers and app image for a post-mortem.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${DARKRIFT_SKIP_DOCKER:-0}" = 1 ]; then
    echo "docker-test: SKIPPED: DARKRIFT_SKIP_DOCKER=1 is set; the Docker scenarios did not run"
    exit 0
fi

TTL=5                      # the mesh servers' --ttl in compose/docker-compose.yml
LEAVE_BOUND=$((TTL * 10 + 15))   # tenths of a second: TTL + 1.5 s
SUITE_START=$(date +%s.%N)
FAILED=0

log() { echo "docker-test: $*" >&2; }
die() { echo "docker-test: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
# Seconds between two epoch times, 2 decimals.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b - a}'; }
# True when $1 <= $2 (decimal seconds).
within() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a <= b)}'; }
figure() { printf 'docker-test: %-10s %s\n' "$SCENARIO" "$*"; }

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine answers (docker version: $(docker version 2>&1 | tail -n 1)); set DARKRIFT_SKIP_DOCKER=1 to skip on purpose"

# The compose tools to run, each a command line: DARKRIFT_COMPOSE alone when set; otherwise
# the installed one (Compose v2's plugin, else docker-compose 1.29) for every scenario, then,
# when that was 1.29, Compose v2 (scripts/compose-v2.sh) for V2_SCENARIOS.
V2_SCENARIOS=(ids mesh)
TOOLS=()
if [ -n "${DARKRIFT_COMPOSE:-}" ]; then
    TOOLS=("$DARKRIFT_COMPOSE")
elif docker compose version >/dev/null 2>&1; then
    TOOLS=("docker compose")
elif command -v docker-compose >/dev/null 2>&1; then
    TOOLS=(docker-compose)
    if v2=$(bash scripts/compose-v2.sh); then
        TOOLS+=("$v2")
    else
        log "Compose v2 cannot be had here (above): only docker-compose 1.29 runs the scenarios"
    fi
else
    die "neither 'docker compose' (v2) nor docker-compose (1.29) is installed"
fi
log "engine $(docker version --format '{{.Server.Version}}'); compose: ${TOOLS[*]}"
COMPOSE=()
PROJECT=""
APP_IMAGE=""
SERVER_IMAGE=""

dc() {
    # A placeholder where the darkrift image was not built: compose checks every variable.
    DARKRIFT_ETCD_IMAGE="$ETCD_IMAGE" DARKRIFT_APP_IMAGE="$APP_IMAGE" \
        DARKRIFT_SERVER_IMAGE="${SERVER_IMAGE:-darkrift-server-not-built}" "${COMPOSE[@]}" \
        -p "$PROJECT" -f compose/docker-compose.yml -f compose/docker-compose.test.yml "$@"
}

# Removes the current project: containers, networks, volumes (what compose knows of, then
# anything left with the project's label). Returns 1 if something could not be removed.
teardown() {
    [ -n "$PROJECT" ] || return 0
    local filter="label=com.docker.compose.project=$PROJECT" ids left
    log "removing project $PROJECT"
    dc --profile ids --profile darkrift down --volumes --remove-orphans --timeout 2 >/dev/null 2>&1 || true
    ids=$(docker ps -aq --filter "$filter")
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    ids=$(docker network ls -q --filter "$filter")
    [ -z "$ids" ] || docker network rm $ids >/dev/null 2>&1 || true
    ids=$(docker volume ls -q --filter "$filter")
    [ -z "$ids" ] || docker volume rm -f $ids >/dev/null 2>&1 || true
    left=$( (docker ps -aq --filter "$filter"; docker network ls -q --filter "$filter"; docker volume ls -q --filter "$filter") | wc -l)
    PROJECT=""
    [ "$left" -eq 0 ] || { log "cleanup left $left objects behind"; return 1; }
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "${DARKRIFT_DOCKER_KEEP:-0}" = 1 ]; then
        log "DARKRIFT_DOCKER_KEEP=1: left project ${PROJECT:-none} and images $APP_IMAGE $SERVER_IMAGE in place"
        exit "$rc"
    fi
    if [ "$rc" -ne 0 ] && [ -n "$PROJECT" ]; then
        local svc c
        for svc in lobby1 lobby2 game1 game2 watch darkrift-lobby1 darkrift-lobby2 darkrift-game1 darkrift-game2; do
            for c in $(containers "$svc" 2>/dev/null); do
                echo "--- last lines of $svc ($c):" >&2
                docker logs -t --tail 25 "$c" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
            done
        done
    fi
    teardown || rc=1
    [ -z "$APP_IMAGE" ] || docker rmi "$APP_IMAGE" >/dev/null 2>&1 || true
    [ -z "$SERVER_IMAGE" ] || docker rmi "$SERVER_IMAGE" >/dev/null 2>&1 || true
    log "total $(elapsed "$SUITE_START" "$(now)") s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(ids mesh etcd partition darkrift)
for s in "${scenarios[@]}"; do
    case "$s" in
        ids|mesh|etcd|partition|darkrift) ;;
        *) die "unknown scenario $s (ids, mesh, etcd, partition, darkrift)" ;;
    esac
done

# --- images ------------------------------------------------------------------------------
SCENARIO=images
t=$(now)
bash scripts/docker-images.sh base >/dev/null
figure "base image ready in $(elapsed "$t" "$(now)") s"
t=$(now)
ETCD_IMAGE=$(bash scripts/docker-images.sh etcd)
figure "etcd image $ETCD_IMAGE ready in $(elapsed "$t" "$(now)") s"
t=$(now)
APP_IMAGE=$(bash scripts/docker-images.sh app)
figure "app image $APP_IMAGE ready in $(elapsed "$t" "$(now)") s (cargo build included)"
# The app image runs as a non-root user.
app_user=$(docker run --rm --network none "$APP_IMAGE" id -u)
[ "$app_user" != 0 ] || die "the app image runs as root"
DARKRIFT_SKIPPED=""
case " ${scenarios[*]} " in
    *" darkrift "*)
        if ! command -v mcs >/dev/null 2>&1; then
            DARKRIFT_SKIPPED="mcs not found (apt-get install mono-devel; scripts/setup.sh does)"
        fi
        if [ -n "$DARKRIFT_SKIPPED" ] && [ "${CI:-}" = true ]; then
            die "darkrift: $DARKRIFT_SKIPPED; CI must run it"
        fi
        if [ -z "$DARKRIFT_SKIPPED" ]; then
            t=$(now)
            # The release binary is the app image's, already built: no second cargo run.
            SERVER_IMAGE=$(DARKRIFT_SKIP_CARGO_BUILD=1 DARKRIFT_SERVER_TAG="" bash scripts/docker-images.sh darkrift) \
                || die "the darkrift image could not be built (above)"
            figure "darkrift image $SERVER_IMAGE ready in $(elapsed "$t" "$(now)") s (plugin build included)"
            [ "$(docker run --rm --network none --entrypoint id "$SERVER_IMAGE" -u)" = 65532 ] \
                || die "the darkrift image does not run as uid 65532"
        fi
        ;;
esac

# --- helpers -----------------------------------------------------------------------------

# Container ids of a service (one line each, by container number).
containers() {
    docker ps -a --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" \
        --format '{{.Label "com.docker.compose.container-number"}} {{.ID}}' | sort -n | cut -d' ' -f2
}
container() {
    local c
    c=$(containers "$1" | head -n 1)
    [ -n "$c" ] || die "no container for service $1"
    echo "$c"
}

# The first log line of container $1 since epoch time $2 matching the ERE $3, waited for up to
# $4 seconds: prints "<epoch seconds of the line> <line>", or fails.
wait_line() {
    local c=$1 since=$2 pattern=$3 timeout=$4 deadline line
    deadline=$(awk -v n="$(now)" -v t="$timeout" 'BEGIN{printf "%.3f", n + t}')
    while :; do
        line=$(docker logs -t --since "$since" "$c" 2>/dev/null | grep -E -m 1 -- "$pattern" || true)
        if [ -n "$line" ]; then
            echo "$(date -d "${line%% *}" +%s.%N) ${line#* }"
            return 0
        fi
        within "$deadline" "$(now)" && return 1
        sleep 0.2
    done
}
# Seconds from epoch time $2 to container $1's first line matching $3 (waited up to $4 s).
time_to() {
    local seen
    seen=$(wait_line "$1" "$2" "$3" "$4") || return 1
    elapsed "$2" "${seen%% *}"
}

# Lines of container $1 since epoch time $2 matching the ERE $3 (none: empty).
lines_since() { docker logs --since "$2" "$1" 2>/dev/null | grep -E -- "$3" || true; }

# The id a mesh server or `register` container holds now: its last "registered" or
# "reregistered" line.
held_id() {
    docker logs "$1" 2>/dev/null | grep -E '"event":"(re)?registered"' | tail -n 1 \
        | grep -oE '"id":[0-9]+' | head -n 1 | cut -d: -f2
}
wait_held_id() {
    local c=$1 since=$2 line
    line=$(wait_line "$c" "$since" '"event":"(re)?registered"' 30) || die "$(name_of "$c") did not register"
    held_id "$c"
}
name_of() { docker inspect --format '{{.Name}}' "$1" | sed 's#^/##'; }

# The registry's group `ids` as `ls -o json` lists it from inside container $1: sorted ids.
ls_ids() {
    docker exec "$1" darkrift-etcd ls -o json --group ids \
        | python3 -c 'import json,sys; print(" ".join(str(s["id"]) for s in sorted(json.load(sys.stdin)["servers"], key=lambda s: s["id"])))'
}

# True when mesh server $1's link to peer $2 in direction $3 is up now: the last
# connected/disconnected line about it says connected.
linked() {
    docker logs "$1" 2>/dev/null \
        | grep -E "\"event\":\"(connected|disconnected)\",\"peer\":$2,\"direction\":\"$3\"" \
        | tail -n 1 | grep -q '"event":"connected"'
}

# Waits until every running lobby is linked upstream to each of the game ids given.
wait_full_mesh() {
    local lobby g deadline
    deadline=$(( $(date +%s) + 30 ))
    for lobby in $(containers lobby1) $(containers lobby2); do
        [ "$(docker inspect --format '{{.State.Running}}' "$lobby")" = true ] || continue
        for g in "$@"; do
            until linked "$lobby" "$g" upstream; do
                [ "$(date +%s)" -lt "$deadline" ] || die "$(name_of "$lobby") is not linked to game $g"
                sleep 0.2
            done
        done
    done
}

# No "left" line at any mesh server and no "leave" at the watcher since $1, except ids in $2.
assert_no_leave() {
    local since=$1 allowed=${2:-} svc c lines
    for svc in lobby1 lobby2 game1 game2 watch; do
        for c in $(containers "$svc"); do
            [ "$(docker inspect --format '{{.State.Running}}' "$c")" = true ] || continue
            lines=$(lines_since "$c" "$since" '"event":"(left|leave)"')
            if [ -n "$allowed" ]; then
                lines=$(grep -vE "\"(peer|id)\":($allowed)," <<<"$lines" || true)
            fi
            [ -z "$lines" ] || die "$SCENARIO: spurious leave at $(name_of "$c"): $lines"
        done
    done
}

wait_etcd_healthy() {
    local svc c deadline
    deadline=$(( $(date +%s) + 60 ))
    for svc in etcd1 etcd2 etcd3; do
        c=$(container "$svc")
        until [ "$(docker inspect --format '{{.State.Health.Status}}' "$c")" = healthy ]; do
            [ "$(date +%s)" -lt "$deadline" ] || die "$svc is not healthy after 60 s"
            sleep 0.5
        done
    done
}

# etcd's own answer to "who leads": the service name of the leader.
etcd_leader() {
    local svc c=""
    for svc in etcd1 etcd2 etcd3; do
        c=$(container "$svc")
        [ "$(docker inspect --format '{{.State.Running}}' "$c")" = true ] && break
    done
    docker exec "$c" etcdctl --endpoints=http://etcd1:2379,http://etcd2:2379,http://etcd3:2379 \
        endpoint status -w json \
        | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    st = s["Status"]
    if st["header"]["member_id"] == st["leader"]:
        print(s["Endpoint"].split("//")[1].split(":")[0])'
}

# The id allocator's cursor position in the `ids` prefix (0 before the first registration).
alloc_cursor() {
    local v
    v=$(docker exec "$(container etcd1)" etcdctl get /darkrift-ids.alloc/cursor --print-value-only)
    echo $((10#${v:-0}))
}

# The records of group `ids` as etcd holds them: "id:alloc_position" pairs, sorted by id
# (the ServerRecord protobuf, proto/darkrift_etcd.proto: id = field 2, alloc_position = 8).
records() {
    docker exec "$(container etcd1)" etcdctl get --prefix /darkrift-ids/ids/ -w json | python3 -c '
import base64, json, sys
def fields(b):
    i, out = 0, {}
    def varint():
        nonlocal i
        v = s = 0
        while True:
            c = b[i]; i += 1; v |= (c & 0x7F) << s; s += 7
            if c < 0x80: return v
    while i < len(b):
        key = varint(); num, wire = key >> 3, key & 7
        if wire == 0: out[num] = varint()
        elif wire == 2: n = varint(); i += n
        elif wire == 1: i += 8
        elif wire == 5: i += 4
        else: raise SystemExit("bad wire type")
    return out
recs = [fields(base64.b64decode(kv["value"])) for kv in json.load(sys.stdin).get("kvs", [])]
print(" ".join(f"{r[2]}:{r.get(8, 0)}" for r in sorted(recs, key=lambda r: r[2])))'
}

# Round-robin, from the records before ($3) and after ($4) scaling up with the cursor at $1 then
# $2: every new registration took a position ahead of the old cursor, and an id freed since $5
# (the records when the freed ids were still held) comes back only at a position a whole id
# space after its previous one. Prints the figures; fails otherwise.
round_robin() {
    python3 - "$@" <<'PY'
import sys
c0, c1 = int(sys.argv[1]), int(sys.argv[2])
parse = lambda s: {int(i): int(p) for i, p in (x.split(":") for x in s.split())}
before, after, earlier = parse(sys.argv[3]), parse(sys.argv[4]), parse(sys.argv[5])
space = 65535  # the default id space
new = {i: p for i, p in after.items() if before.get(i) != p}
behind = {i: p for i, p in new.items() if not c0 < p <= c1}
freed = {i: p for i, p in earlier.items() if i not in before}
again = {i: (freed[i], new[i]) for i in new if i in freed}
early = {i: v for i, v in again.items() if v[1] - v[0] < space}
laps = (c1 - c0) / space
print(f"docker-test: ids          {len(new)} new registrations at positions {min(new.values())}..{max(new.values())}, "
      f"all ahead of the cursor {c0}: {'yes' if not behind else 'NO ' + str(behind)}; the cursor moved "
      f"{c1 - c0} ({(c1 - c0) // max(len(new), 1)} per registration, {laps:.2f} x the id space)")
print(f"docker-test: ids          freed ids handed out again: "
      + (" ".join(f"{i} (position {a} -> {b})" for i, (a, b) in again.items()) or "none")
      + (f"; BEFORE a full walk: {early}" if early else ""))
sys.exit(1 if behind or early else 0)
PY
}

# --- 1. ids ------------------------------------------------------------------------------
scenario_ids() {
    SCENARIO=ids
    local t out rc c prev step ids n freed="" new
    t=$(now)
    log "ids: README's command: 12 register replicas and check-ids"
    rc=0
    out=$(dc --profile ids up --no-build --abort-on-container-exit --exit-code-from check-ids \
        register check-ids 2>&1) || rc=$?
    grep -q 'check-ids: OK: 12 servers, 12 distinct ids' <<<"$out" && [ "$rc" -eq 0 ] \
        || { printf '%s\n' "$out" | tail -n 40 >&2; die "ids: check-ids exited $rc"; }
    figure "12 replicas at once: check-ids OK (exit 0) in $(elapsed "$t" "$(now)") s from 'up': $(grep -o 'distinct ids:.*' <<<"$out" | head -n 1)"
    # --abort-on-container-exit stopped every container of that command; each deregistered.
    prev=""
    local cursor0 cursor1 recs prev_recs="" held_recs=""
    for step in 30 5 20; do
        t=$(now)
        cursor0=$(alloc_cursor)
        dc --profile ids up -d --no-build --no-recreate --scale "register=$step" register >/dev/null 2>&1 \
            || die "ids: scaling register to $step failed"
        c=$(container register)
        local deadline=$(( $(date +%s) + 60 ))
        while :; do
            ids=$(ls_ids "$c" 2>/dev/null || true)
            n=$(wc -w <<<"$ids")
            [ "$n" -eq "$step" ] && break
            [ "$(date +%s)" -lt "$deadline" ] || die "ids: $n servers listed after scaling to $step: $ids"
            sleep 0.3
        done
        cursor1=$(alloc_cursor)
        figure "scaled to $step: the registry lists $step servers after $(elapsed "$t" "$(now)") s (cursor $cursor0 -> $cursor1)"
        [ "$(tr ' ' '\n' <<<"$ids" | sort -n | uniq -d | wc -l)" -eq 0 ] || die "ids: duplicate ids at $step: $ids"
        # Truth from the containers: each running replica's own id, the same set.
        local held=""
        for c2 in $(containers register); do
            [ "$(docker inspect --format '{{.State.Running}}' "$c2")" = true ] || continue
            held="$held $(held_id "$c2")"
        done
        [ "$(tr ' ' '\n' <<<"$held" | grep . | sort -n | tr '\n' ' ')" = "$(tr ' ' '\n' <<<"$ids" | sort -n | tr '\n' ' ')" ] \
            || die "ids: the containers hold [$held], the registry lists [$ids]"
        recs=$(records)
        [ "$(tr ' ' '\n' <<<"$recs" | cut -d: -f1 | sort -n | tr '\n' ' ')" = "$(tr ' ' '\n' <<<"$ids" | sort -n | tr '\n' ' ')" ] \
            || die "ids: etcd's records [$recs] are not the listed ids [$ids]"
        figure "  $step distinct ids, the same as the $step containers hold and etcd's records: $ids"
        if [ "$step" -eq 5 ]; then
            freed=$(comm -23 <(tr ' ' '\n' <<<"$prev" | sort) <(tr ' ' '\n' <<<"$ids" | sort) | grep . | sort -n | tr '\n' ' ')
            [ "$cursor1" = "$cursor0" ] || die "ids: scaling down moved the cursor"
            figure "  freed by scaling down (now behind the cursor $cursor1): $freed"
        else
            round_robin "$cursor0" "$cursor1" "$prev_recs" "$recs" "$held_recs" || die "ids: not round-robin (above)"
        fi
        held_recs="$prev_recs $recs"
        prev_recs=$recs
        prev=$ids
    done
    dc --profile ids rm -s -f register check-ids >/dev/null 2>&1 || true
}

# Every lobby drops game $1 (announces its leave) within TTL + 1.5 s of epoch time $2; $3 says
# what happened to it, for the figures.
every_lobby_drops() {
    local g=$1 t0=$2 what=$3 lobby d
    for lobby in lobby1 lobby2; do
        d=$(time_to "$(container "$lobby")" "$t0" "\"event\":\"left\",\"peer\":$g," 20) \
            || die "$SCENARIO: $lobby never dropped game $g ($what)"
        within "$d" "$(awk -v b="$LEAVE_BOUND" 'BEGIN{print b/10}')" \
            || die "$SCENARIO: $lobby dropped game $g after $d s > TTL + 1.5 s ($what)"
        figure "$what: $lobby dropped it after $d s (bound $TTL + 1.5 s)"
    done
}

# Starts the mesh servers and the watcher; waits for the full mesh.
mesh_up() {
    local t; t=$(now)
    dc up -d --no-build lobby1 lobby2 game1 game2 watch >/dev/null 2>&1 || die "mesh: up failed"
    L1=$(wait_held_id "$(container lobby1)" "$t"); L2=$(wait_held_id "$(container lobby2)" "$t")
    G1=$(wait_held_id "$(container game1)" "$t"); G2=$(wait_held_id "$(container game2)" "$t")
    wait_full_mesh "$G1" "$G2"
    figure "lobbies $L1 $L2 linked to games $G1 $G2 $(elapsed "$t" "$(now)") s after 'up'"
}

# --- 2. mesh -----------------------------------------------------------------------------
G1="" G2="" L1="" L2=""
scenario_mesh() {
    SCENARIO=mesh
    local t t0 d lobby c
    mesh_up

    # A crash: every lobby drops the game within TTL + 1.5 s.
    t0=$(now)
    docker kill -s KILL "$(container game1)" >/dev/null
    every_lobby_drops "$G1" "$t0" "docker kill -s KILL game1 ($G1)"

    # A clean stop: SIGTERM deregisters, the games see the leave at once.
    c=$(container lobby2)
    t0=$(now)
    docker stop "$c" >/dev/null
    local stopped; stopped=$(elapsed "$t0" "$(now)")
    d=$(time_to "$(container game2)" "$t0" "\"event\":\"left\",\"peer\":$L2," 15) || die "mesh: game2 never saw lobby2 leave"
    local dw; dw=$(time_to "$(container watch)" "$t0" "\"event\":\"leave\",\"group\":\"lobby\",.*\"id\":$L2," 15) || die "mesh: the watcher never saw lobby2 leave"
    [ "$(docker inspect --format '{{.State.ExitCode}}' "$c")" = 0 ] || die "mesh: lobby2 did not exit 0 on SIGTERM"
    within "$d" 10 || die "mesh: lobby2's leave seen after $d s, beyond the 10 s stop grace period"
    figure "docker stop lobby2 ($L2): returned in $stopped s (exit 0); game2 saw the leave after $d s, the watcher after $dw s"

    # Restarted containers register again and link.
    t0=$(now)
    docker start "$(container game1)" "$c" >/dev/null
    G1=$(wait_held_id "$(container game1)" "$t0"); L2=$(wait_held_id "$c" "$t0")
    wait_full_mesh "$G1" "$G2"
    figure "docker start game1 lobby2: registered as $G1 and $L2, full mesh again after $(elapsed "$t0" "$(now)") s"
}

# --- 3. etcd faults ----------------------------------------------------------------------
scenario_etcd() {
    SCENARIO=etcd
    local t0 t1 d leader c old
    [ -n "$G2" ] || mesh_up
    # One member stopped: nothing leaves; a server restarted meanwhile registers and links.
    t0=$(now)
    docker stop "$(container etcd2)" >/dev/null
    sleep $((2 * TTL))
    assert_no_leave "$t0"
    figure "docker stop etcd2: no leave in $(elapsed "$t0" "$(now)") s (2 x TTL)"
    old=$G2
    t1=$(now)
    docker restart "$(container game2)" >/dev/null
    G2=$(wait_held_id "$(container game2)" "$t1")
    [ "$G2" != "$old" ] || die "etcd: game2 kept id $old across a clean restart"
    wait_full_mesh "$G1" "$G2"
    assert_no_leave "$t0" "$old"
    figure "  with etcd2 down: game2 restarted, registered as $G2 and every lobby linked to it in $(elapsed "$t1" "$(now)") s; only its old id $old left"
    docker start "$(container etcd2)" >/dev/null
    wait_etcd_healthy

    # The leader's container killed: no leave.
    leader=$(etcd_leader)
    [ -n "$leader" ] || die "etcd: no leader found"
    t0=$(now)
    docker kill -s KILL "$(container "$leader")" >/dev/null
    sleep $((2 * TTL))
    assert_no_leave "$t0"
    figure "docker kill -s KILL $leader (the leader): no leave in $(elapsed "$t0" "$(now)") s (2 x TTL); new leader $(etcd_leader)"
    docker start "$(container "$leader")" >/dev/null
    wait_etcd_healthy

    # All three members restarted within the TTL: no leave. SIGKILL, then all started at
    # once: a graceful `docker restart` of the three takes about the TTL here (each leader
    # tries a leadership transfer to members that are stopping too), see compose/README.md.
    local members=("$(container etcd1)" "$(container etcd2)" "$(container etcd3)") m attempt
    for attempt in 1 2 3; do
        t0=$(now)
        docker kill -s KILL "${members[@]}" >/dev/null
        for m in "${members[@]}"; do docker start "$m" >/dev/null & done
        wait
        t1=$(now)
        until docker exec "${members[0]}" etcdctl --endpoints=http://etcd1:2379,http://etcd2:2379,http://etcd3:2379 \
            endpoint health >/dev/null 2>&1; do
            within "$(elapsed "$t0" "$(now)")" 30 || die "etcd: no quorum 30 s after the restart"
            sleep 0.1
        done
        d=$(elapsed "$t0" "$(now)")
        within "$d" "$TTL" && break
        # Not a restart within the TTL (the engine was slow to start the containers): leases
        # may rightly be lost. Let the servers settle, then try again.
        figure "attempt $attempt: the three members were back only after $d s, more than the TTL; again in $((3 * TTL)) s"
        [ "$attempt" -lt 3 ] || die "etcd: three attempts to restart the members within the TTL failed"
        sleep $((3 * TTL))
        wait_full_mesh "$G1" "$G2"
    done
    sleep $((2 * TTL))
    assert_no_leave "$t0"
    figure "all three members killed and started again: running after $(elapsed "$t0" "$t1") s, quorum after $d s (TTL $TTL s): no leave in $(elapsed "$t0" "$(now)") s"
    wait_etcd_healthy
    c=$(container lobby1)
    [ "$(docker inspect --format '{{.State.Running}}' "$c")" = true ] || die "etcd: lobby1 stopped"
}

# --- 4. partition ------------------------------------------------------------------------
scenario_partition() {
    SCENARIO=partition
    local net game t0 t1 d lobby c2
    [ -n "$G2" ] || mesh_up
    net=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.network=etcd")
    [ -n "$net" ] || die "partition: no etcd network"
    game=$(container game2)
    t0=$(now)
    docker network disconnect "$net" "$game"
    every_lobby_drops "$G2" "$t0" "game2 ($G2) cut off etcd"
    # While it is cut off, lobby2 stops cleanly: game2 cannot see that leave yet.
    c2=$(container lobby2)
    docker stop "$c2" >/dev/null
    sleep $((TTL - 2))
    [ -z "$(lines_since "$game" "$t0" "\"event\":\"left\",\"peer\":$L2,")" ] \
        || die "partition: game2 saw lobby2 leave while cut off from etcd"
    t1=$(now)
    docker network connect "$net" "$game"
    local cut; cut=$(elapsed "$t0" "$t1")
    wait_line "$game" "$t1" "\"event\":\"reregistered\",\"id\":$G2,\"previous_id\":$G2" 30 >/dev/null \
        || die "partition: game2 did not come back with id $G2: $(lines_since "$game" "$t1" .)"
    d=$(time_to "$(container lobby1)" "$t1" "\"event\":\"connected\",\"peer\":$G2,\"direction\":\"upstream\"" 30) \
        || die "partition: lobby1 did not link to game2 again"
    local dv; dv=$(time_to "$game" "$t1" "\"event\":\"left\",\"peer\":$L2," 30) \
        || die "partition: game2's view never caught up with lobby2's leave"
    figure "reconnected after $cut s: game2 re-registered as $G2 (same id), lobby1 linked again after $d s, game2 saw lobby2's leave (missed while cut) after $dv s"
}

# --- 5. darkrift -------------------------------------------------------------------------
DR_TTL=10   # ttl="10s" in darkrift/config/Server.child.config (the image's /opt/darkrift)
DR_LOBBIES=(darkrift-lobby1 darkrift-lobby2)

# The id DarkRift got in container $1 since epoch time $2 (its "Registered server with
# registry as ID N." line).
dr_id() {
    local line
    line=$(wait_line "$1" "$2" 'Registered server with registry as ID [0-9]+\.' 60) \
        || die "darkrift: $(name_of "$1") did not register: $(docker logs --tail 15 "$1" 2>&1)"
    grep -oE 'ID [0-9]+' <<<"$line" | cut -d' ' -f2
}
dr_left() { echo "informed us that server $1 has left the cluster"; }
# Every lobby logs game $1's leave; $2 the epoch time of the fault, $3 what happened. Prints
# the figures; fails beyond $4 seconds.
dr_every_lobby_leave() {
    local g=$1 t0=$2 what=$3 bound=$4 lobby d
    for lobby in "${DR_LOBBIES[@]}"; do
        d=$(time_to "$(container "$lobby")" "$t0" "$(dr_left "$g")" "$bound") \
            || die "darkrift: $lobby logged no leave of $g within $bound s ($what)"
        figure "$what: $lobby logged the leave of $g after $d s"
    done
}
# Every lobby is connected to each game id given (since epoch time $1).
dr_every_lobby_connects() {
    local t0=$1 lobby g d
    shift
    for lobby in "${DR_LOBBIES[@]}"; do
        for g in "$@"; do
            d=$(time_to "$(container "$lobby")" "$t0" "Connected to server $g on " 60) \
                || die "darkrift: $lobby did not connect to game $g: $(lines_since "$(container "$lobby")" "$t0" "server $g")"
            echo "$d"
        done
    done | sort -n | tail -n 1
}
# The pid of the plugin's child agent in container $1 (inside its pid namespace).
dr_agent_pid() {
    docker exec "$1" bash -c 'for d in /proc/[0-9]*; do
        if [ "$(tr "\0" " " <"$d/cmdline" 2>/dev/null | cut -d" " -f1-2)" = "/usr/local/bin/darkrift-etcd agent" ]; then
            echo "${d#/proc/}"
        fi
    done' | head -n 1
}
# No lobby and no game logged a leave since epoch time $1.
dr_assert_no_leave() {
    local svc c lines
    for svc in darkrift-lobby1 darkrift-lobby2 darkrift-game1 darkrift-game2; do
        c=$(container "$svc")
        [ "$(docker inspect --format '{{.State.Running}}' "$c")" = true ] || continue
        lines=$(lines_since "$c" "$1" 'has left the cluster|registered again after its lease was lost|\[Fatal\]')
        [ -z "$lines" ] || die "darkrift: $2: $svc logged: $lines"
    done
}

scenario_darkrift() {
    SCENARIO=darkrift
    if [ -n "$DARKRIFT_SKIPPED" ]; then
        figure "SKIPPED: $DARKRIFT_SKIPPED"
        return
    fi
    local t t0 t1 d g1 g2 l1 l2 c lobby pid new svc
    t=$(now)
    dc --profile darkrift up -d --no-build "${DR_LOBBIES[@]}" darkrift-game1 darkrift-game2 >/dev/null 2>&1 \
        || die "darkrift: up failed: $(dc --profile darkrift up -d --no-build darkrift-game1 2>&1 | tail -n 5)"
    l1=$(dr_id "$(container darkrift-lobby1)" "$t"); l2=$(dr_id "$(container darkrift-lobby2)" "$t")
    g1=$(dr_id "$(container darkrift-game1)" "$t"); g2=$(dr_id "$(container darkrift-game2)" "$t")
    d=$(dr_every_lobby_connects "$t" "$g1" "$g2")
    figure "DarkRift lobbies $l1 $l2 connected to games $g1 $g2 by $d s after 'up' (mono start, child agent, registration, probe)"
    for c in $(containers darkrift-lobby1) $(containers darkrift-lobby2); do
        [ -z "$(lines_since "$c" "$t" 'Could not connect to server')" ] \
            || die "darkrift: $(name_of "$c") dialled a game before it listened: $(lines_since "$c" "$t" 'Could not connect')"
    done

    # A crash: the container (DarkRift and its child agent) killed; the lease expires.
    t0=$(now)
    docker kill -s KILL "$(container darkrift-game1)" >/dev/null
    dr_every_lobby_leave "$g1" "$t0" "docker kill -s KILL darkrift-game1 ($g1)" $((DR_TTL + 10))

    # A stall: `docker pause` freezes DarkRift and its agent; the lease runs out after the TTL.
    t0=$(now)
    docker pause "$(container darkrift-game2)" >/dev/null
    dr_every_lobby_leave "$g2" "$t0" "docker pause darkrift-game2 ($g2), TTL $DR_TTL s" $((DR_TTL + 10))
    t1=$(now)
    docker unpause "$(container darkrift-game2)" >/dev/null
    for lobby in "${DR_LOBBIES[@]}"; do
        d=$(time_to "$(container "$lobby")" "$t1" "informed us of a server \\($g2\\) in group 'game'" 30) \
            || die "darkrift: $lobby never heard of $g2 again after unpause"
        local dc2; dc2=$(time_to "$(container "$lobby")" "$t1" "Connected to server $g2 on " 30) \
            || die "darkrift: $lobby did not connect to $g2 again"
        figure "docker unpause darkrift-game2: $lobby heard of the same id $g2 after $d s, connected after $dc2 s"
    done
    c=$(container darkrift-game2)
    [ "$(docker inspect --format '{{.State.Running}}' "$c")" = true ] || die "darkrift: game2 exited after unpause"
    [ -z "$(lines_since "$c" "$t1" '\[Fatal\]')" ] || die "darkrift: game2: $(lines_since "$c" "$t1" '\[Fatal\]')"

    # Agent restarts: the child agent of a lobby and of a game killed inside their containers.
    # The plugin restarts it and resumes the registration on its lease: same ids, no leave.
    sleep 1
    t0=$(now)
    for svc in darkrift-lobby1 darkrift-game2; do
        c=$(container "$svc")
        pid=$(dr_agent_pid "$c")
        [ -n "$pid" ] || die "darkrift: no child agent in $svc"
        docker exec "$c" bash -c "kill -KILL $pid"
    done
    for svc in darkrift-lobby1 darkrift-game2; do
        c=$(container "$svc")
        case $svc in darkrift-lobby1) new=$l1 ;; *) new=$g2 ;; esac
        d=$(time_to "$c" "$t0" "Resumed id $new with the registry agent" 30) \
            || die "darkrift: $svc did not resume id $new: $(lines_since "$c" "$t0" 'registry|agent' | tail -n 5)"
        figure "child agent of $svc killed (kill -KILL in the container): resumed id $new after $d s"
    done
    # Watched until the leases would have expired without the resume.
    sleep $((DR_TTL + 2))
    dr_assert_no_leave "$t0" "after the agent restarts"
    c=$(container darkrift-lobby2)
    [ -z "$(lines_since "$c" "$t0" "Lost connection to server $g2 ")" ] || figure "  (lobby2's link to $g2 dropped meanwhile)"
    figure "no leave, no lost lease, no Fatal at any server for $(elapsed "$t0" "$(now)") s after the agent kills"

    # A clean stop: SIGTERM to DarkRiftHost disposes the server, the plugin deregisters.
    c=$(container darkrift-game2)
    t0=$(now)
    docker stop "$c" >/dev/null
    local stopped; stopped=$(elapsed "$t0" "$(now)")
    [ "$(docker inspect --format '{{.State.ExitCode}}' "$c")" = 0 ] \
        || die "darkrift: game2 exited $(docker inspect --format '{{.State.ExitCode}}' "$c") on SIGTERM"
    wait_line "$c" "$t0" 'Deregistered server from registry\.' 1 >/dev/null || die "darkrift: game2 did not deregister"
    for lobby in "${DR_LOBBIES[@]}"; do
        d=$(time_to "$(container "$lobby")" "$t0" "$(dr_left "$g2")" 10) \
            || die "darkrift: $lobby logged no leave of $g2 after docker stop"
        within "$d" 5 || die "darkrift: $lobby logged the leave of $g2 after $d s (a clean stop is seen at once)"
        figure "docker stop darkrift-game2 ($g2): returned in $stopped s (exit 0, deregistered); $lobby logged the leave after $d s"
    done
}

# -----------------------------------------------------------------------------------------
passed=0
for i in "${!TOOLS[@]}"; do
    read -r -a COMPOSE <<<"${TOOLS[$i]}"
    run=("${scenarios[@]}")
    if [ "$i" -gt 0 ]; then
        # The second tool (Compose v2 after 1.29) runs the scenarios that exercise compose
        # itself (profiles, --abort-on-container-exit, scaling, up/stop/start); the others
        # drive the engine directly and would only repeat themselves.
        run=()
        for s in "${scenarios[@]}"; do
            case " ${V2_SCENARIOS[*]} " in *" $s "*) run+=("$s") ;; esac
        done
        [ "${#run[@]}" -gt 0 ] || continue
    fi
    G1="" G2="" L1="" L2=""
    PROJECT="darkrift-test-$$-$i"
    SCENARIO=compose
    figure "$("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -n 1) (${COMPOSE[*]}): ${run[*]}"
    for s in "${run[@]}"; do
        start=$(now)
        "scenario_$s"
        SCENARIO=$s
        figure "done in $(elapsed "$start" "$(now)") s"
        passed=$((passed + 1))
    done
    teardown || die "project $PROJECT not removed"
done
echo "docker-test: $passed passed, 0 failed"
