# etcdctl with a shell, for the auth Job (etcd-auth-job.yaml): the official etcd 3.5 image is
# distroless, with no shell to run the Job's script in. No build context is needed:
#   docker build -t darkrift-etcdctl:v3.5.17 - < deploy/kubernetes/etcdctl.Dockerfile
FROM gcr.io/etcd-development/etcd:v3.5.17 AS etcd

FROM debian:bookworm-slim
COPY --from=etcd /usr/local/bin/etcdctl /usr/local/bin/etcdctl
USER 65532:65532
ENTRYPOINT []
CMD ["etcdctl", "version"]
