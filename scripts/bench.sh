#!/usr/bin/env bash
# Runs the full comparison behind the README's table and plot: installs
# redis-server if it is missing, builds machq, and runs `machq bench` with
# every system, writing docs/bench/results.txt (the tables),
# docs/bench/results.json and docs/bench/latency.png. Extra arguments go
# to machq bench (e.g. --sizes 64,1M --time 200ms for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
./scripts/install-redis.sh
go build -o bin/ ./cmd/...
out=docs/bench
mkdir -p "$out"
bin/machq bench --time 1s --save "$out/results.json" --plot "$out/latency.png" "$@" | tee "$out/results.txt"
