#!/usr/bin/env bash
# Builds the DarkRift side of darkrift-etcd with Debian's mono compiler (mcs 6.8, about C# 6):
#   OUTDIR/Plugins/DarkRift.Etcd.dll   the server registry connector (EtcdServerRegistryConnector)
#   OUTDIR/DarkRiftHost.exe            a console host that disposes the server on SIGTERM/SIGINT
# against DarkRift.dll and DarkRift.Server.dll from DARKRIFT_DIR. Without DARKRIFT_DIR, DarkRift
# 2.11.0 is built from ../shared/third_party/darkrift (or $DARKRIFT_SRC) into a cache directory
# ($XDG_CACHE_HOME/darkrift-etcd/darkrift-2.11.0, once), and its DLLs are copied beside the host.
# No NuGet; references only framework assemblies mono-devel ships (System.Web.Extensions for JSON,
# Mono.Posix for the host's signals). DarkRift's code and binaries are never written into the repo.
#
#   usage: darkrift/build.sh OUTDIR [DARKRIFT_DIR]
#   then:  cd OUTDIR && mono DarkRiftHost.exe Server.config Cluster.config -port=4296 ...
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build.sh OUTDIR [DARKRIFT_DIR]}
command -v mcs >/dev/null || { echo "build.sh: mcs not found: apt-get install -y --no-install-recommends mono-devel" >&2; exit 2; }
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)

DR=${2:-}
if [ -z "$DR" ]; then
  SRC=${DARKRIFT_SRC:-$HERE/../../shared/third_party/darkrift}
  [ -f "$SRC/build.sh" ] || SRC=/work/shared/third_party/darkrift
  DR=${XDG_CACHE_HOME:-$HOME/.cache}/darkrift-etcd/darkrift-2.11.0
  if [ ! -f "$DR/DarkRift.Server.dll" ]; then
    bash "$SRC/build.sh" "$DR" >&2
  fi
fi
DR=$(cd "$DR" && pwd)
for f in DarkRift.dll DarkRift.Server.dll; do
  [ -f "$DR/$f" ] || { echo "build.sh: $DR/$f missing" >&2; exit 2; }
done

MCS="mcs -langversion:6 -warnaserror+ -nowarn:1591"
mkdir -p "$OUT/Plugins"
# Plugins/ holds only our DLL: DarkRift scans every DLL of a plugin search path.
$MCS -target:library -out:"$OUT/Plugins/DarkRift.Etcd.dll" \
  -r:System.dll -r:System.Core.dll -r:System.Web.Extensions.dll \
  -r:"$DR/DarkRift.dll" -r:"$DR/DarkRift.Server.dll" \
  "$HERE"/src/*.cs
$MCS -target:exe -out:"$OUT/DarkRiftHost.exe" \
  -r:System.dll -r:System.Core.dll -r:Mono.Posix.dll \
  -r:"$DR/DarkRift.dll" -r:"$DR/DarkRift.Server.dll" \
  "$HERE"/host/*.cs

# The host needs DarkRift's assemblies beside it (mono resolves them from the exe's folder).
if [ "$DR" != "$OUT" ]; then
  for f in DarkRift.dll DarkRift.Client.dll DarkRift.Server.dll DarkRift-LICENSE.md; do
    [ -f "$DR/$f" ] && cp -f "$DR/$f" "$OUT/"
  done
fi
cp -f "$HERE"/config/*.config "$OUT/"
echo "build.sh: Plugins/DarkRift.Etcd.dll and DarkRiftHost.exe built in $OUT (DarkRift from $DR)"
