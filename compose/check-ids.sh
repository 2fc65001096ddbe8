#!/bin/sh
# The id-allocation scenario's checker: waits until EXPECTED_IDS servers of group CHECK_GROUP
# are registered (as `darkrift-etcd ls -o json` lists them), then fails if two share an id.
#
# Environment: EXPECTED_IDS (required), CHECK_GROUP (default `ids`), CHECK_TIMEOUT seconds
# (default 60), and the CLI's own DARKRIFT_ETCD_ENDPOINTS / DARKRIFT_ETCD_PREFIX.
set -eu

expected="${EXPECTED_IDS:?set EXPECTED_IDS to the number of registrations}"
group="${CHECK_GROUP:-ids}"
timeout="${CHECK_TIMEOUT:-60}"
start=$(date +%s)
ids=""
count=0

while :; do
    if json=$(darkrift-etcd ls -o json --group "$group"); then
        # One object per server, compact JSON: `"id":N` occurs once per object.
        ids=$(printf '%s' "$json" | grep -o '"id":[0-9]*' | cut -d: -f2 || true)
        count=$(printf '%s\n' "$ids" | grep -c . || true)
        [ "$count" -ge "$expected" ] && break
    fi
    if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
        echo "check-ids: FAIL: $count of $expected servers registered after ${timeout}s" >&2
        exit 1
    fi
    sleep 1
done

dups=$(printf '%s\n' "$ids" | sort -n | uniq -d)
if [ -n "$dups" ]; then
    echo "check-ids: FAIL: ids held by more than one server:" $dups >&2
    exit 1
fi
echo "check-ids: OK: $count servers, $count distinct ids:" $(printf '%s\n' "$ids" | sort -n)
