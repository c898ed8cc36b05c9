#!/usr/bin/env bash
# Runs the full-size load test behind docs/RELIABILITY.md: 200 client
# processes, 2000 messages each of up to 16 MiB, a tenth of them killed
# with SIGKILL. Extra arguments go to machq load (see machq load --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
go build -o bin/ ./cmd/...
exec bin/machq load "$@"
