# `darkrift-server:demo`: real DarkRift 2.11 servers with the darkrift-etcd plugin, on Debian
# 12's mono runtime. scripts/docker-images.sh darkrift builds it (progress on stderr, the tag on
# stdout) from a build context it lays out on the host, because the image build reaches no
# network and DarkRift is never committed:
#
#   debs/                    Debian 12's .deb files of MONO_PACKAGES (below) and every dependency
#                            the debian:bookworm-slim base lacks, downloaded on the host by apt
#                            against the base's own dpkg status; apt installs them here as local
#                            files (it orders them, Pre-Depends included; nothing is fetched:
#                            docker-images.sh builds with --network none)
#   darkrift/                darkrift/build.sh's output: DarkRift.dll, DarkRift.Server.dll,
#                            DarkRift.Client.dll, DarkRift-LICENSE.md, DarkRiftHost.exe,
#                            Plugins/DarkRift.Etcd.dll and darkrift/config/*.config
#   darkrift-etcd            the release CLI (`cargo build --release -p darkrift-etcd-cli`), so
#                            the plugin can run the agent as its child (`agentPath`)
#
# Where Debian's mirror is reachable, `apt-get install --no-install-recommends` of the same
# packages in place of the local files gives the same image.
#
#   docker run darkrift-server:demo /opt/darkrift/Server.child.config /opt/darkrift/Cluster.config \
#       -group=game -host=game1 -port=4296 -healthPort=10666 \
#       -agentPath=/usr/local/bin/darkrift-etcd -endpoints=http://etcd:2379 -prefix=/darkrift
FROM debian:bookworm-slim

# mono-runtime (the VM and mscorlib) and the framework assemblies DarkRift 2.11, the plugin and
# DarkRiftHost.exe load: System, System.Core, System.Xml, System.Xml.Linq, System.Configuration,
# System.Data (DarkRift.Server), System.Web.Extensions (the plugin's JavaScriptSerializer),
# Mono.Posix (the host's UnixSignal; libmono-posix4.0-cil brings libMonoPosixHelper).
# docker-images.sh reads this list: keep it one package per line between the markers.
# MONO_PACKAGES begin
#   mono-runtime
#   libmono-system4.0-cil
#   libmono-system-core4.0-cil
#   libmono-system-xml4.0-cil
#   libmono-system-xml-linq4.0-cil
#   libmono-system-configuration4.0-cil
#   libmono-system-data4.0-cil
#   libmono-system-web-extensions4.0-cil
#   libmono-posix4.0-cil
# MONO_PACKAGES end
COPY debs/ /tmp/debs/
RUN apt-get install -y -q --no-install-recommends /tmp/debs/*.deb >/tmp/apt.log 2>&1 \
        || { tail -n 40 /tmp/apt.log; exit 1; }; \
    rm -rf /tmp/debs /tmp/apt.log /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && mono --version | head -n 1

COPY darkrift/ /opt/darkrift/
COPY darkrift-etcd /usr/local/bin/darkrift-etcd
# The same non-root uid as deploy/kubernetes (runAsUser: 65532); nothing here needs root: the
# listeners use ports above 1024. DarkRift creates its data directory (`Data/`, relative to the
# working directory) at start: the working directory is the user's, /opt/darkrift stays root's.
RUN chmod 755 /usr/local/bin/darkrift-etcd \
    && groupadd --system --gid 65532 darkrift \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /var/lib/darkrift \
        --shell /usr/sbin/nologin darkrift \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/darkrift
USER 65532:65532
WORKDIR /var/lib/darkrift
EXPOSE 4296
ENTRYPOINT ["mono", "/opt/darkrift/DarkRiftHost.exe"]
CMD ["/opt/darkrift/Server.config", "/opt/darkrift/Cluster.config"]
