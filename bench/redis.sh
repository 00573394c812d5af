#!/usr/bin/env bash
# The shared store's cost (issue 12): Redis memory per grant with Azure-sized tokens, and the sign-in and refresh
# latency Redis adds over the memory backend (p50/p99), through the running proxy. One command: bash bench/redis.sh
# Needs redis-server (Debian's package; installed when missing). Release build unless BENCH_PROFILE is set
# (BENCH_PROFILE=dev reuses a debug build). BENCH_SIGNINS: sign-ins and refreshes per backend (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
cargo bench --locked --bench redis_store ${BENCH_PROFILE:+--profile "$BENCH_PROFILE"}
