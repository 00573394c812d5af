#!/usr/bin/env bash
# The benchmark, one command from a clean clone: bash bench/run.sh
# Builds in release mode, installs nginx, wrk and redis-server (Debian) when missing, then runs bench/run.py, which
# compares (a) the upstream fixture directly, (b) nginx as a plain reverse proxy, (c) dcr-proxy with a pre-issued
# grant, (d) the same on the Redis backend (its own redis-server on an ephemeral loopback port), in interleaved
# rounds on loopback, and writes bench/results/latest.json. More targets: see bench/run.py's doc.
# Environment: BENCH_SECONDS (per run, default 5), BENCH_ROUNDS (default 3), BENCH_MEMORY_MAX (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk redis-server
fi
cargo build --release --locked --bin dcr-proxy --example bench_upstream --example bench_proxy \
  --example bench_sse_latency --example bench_memory
python3 bench/run.py "$@"
