#!/usr/bin/env bash
# README's demo: installs what is missing, then runs examples/demo.rs, which starts a
# throwaway local etcd and a mesh of servers in two groups (lobby dials game), shows joins,
# leaves and connections as servers come, crash and go, and exits by itself after ~30 s,
# stopping every process it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Prefer etcd 3.5; the demo finds it through ETCD_BIN.
ETCD_BIN="${ETCD_BIN:-$(bash scripts/etcd-path.sh 3.5)}"
export ETCD_BIN
# The demo launches the mesh server (mesh/, binary darkrift-mesh) as child processes: build
# both first.
cargo build --release -p darkrift-etcd-mesh --bin darkrift-mesh
cargo build --release --example demo
exec cargo run --release --example demo -- "$@"
