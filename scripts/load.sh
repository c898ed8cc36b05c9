#!/usr/bin/env bash
# Runs the full-size load test behind docs/RELIABILITY.md: 200 client
# processes, 2000 messages each of up to 16 MiB, a tenth of them killed
# with SIGKILL. `./scripts/load.sh --ack` runs the acknowledged-delivery
# load test instead: 50 producers storing 2000 messages each into 8 shared
# queues, 200 consumers acknowledging them, a tenth of the consumers killed
# while they hold deliveries. Extra arguments go to machq load (see
# machq load --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
go build -o bin/ ./cmd/...
exec bin/machq load "$@"
