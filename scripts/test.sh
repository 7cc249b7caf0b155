#!/usr/bin/env bash
# Runs the whole test suite. Installs nats-server and redis-server (Debian
# packages) when they are missing: the tests start their own instances on
# free loopback ports and never use the ones on the standard ports.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_services_installed
cargo test --all-targets "$@"
