#!/usr/bin/env bash
# Runs the whole test suite. Installs nats-server and redis-server (Debian
# packages) when they are missing, and a newer nats-server for the cluster
# tests (lib.sh): the tests start their own instances on free loopback
# ports and never use the ones on the standard ports.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_services_installed
ensure_cluster_nats_server
cargo test --all-targets "$@"
