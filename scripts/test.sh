#!/usr/bin/env bash
# Runs every check machq's CI runs: formatting, vet, staticcheck, the whole
# test suite under the race detector, the durable queues' kill loop for
# hundreds of rounds (KILL_ROUNDS, default 300; KILL_ROUNDS=0 skips it; the
# suite itself runs 10), and each fuzz target for a bounded number of
# executions (FUZZTIME, default 500000x; FUZZTIME=0 skips fuzzing).
# The budget is a count, not a duration: with a duration, Go 1.26's fuzzing
# coordinator can report a spurious "context deadline exceeded" failure when
# the time runs out while a worker is mid-call (go.dev/issue/75804).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH)/bin"

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go mod tidy"
if ! go mod tidy -diff; then
  echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1
fi

echo "== go vet"
go vet ./...

if command -v staticcheck >/dev/null 2>&1; then
  echo "== staticcheck"
  staticcheck ./...
else
  echo "== staticcheck not installed; skipped (go install honnef.co/go/tools/cmd/staticcheck@v0.8.2)"
fi

echo "== go test -race"
go test -race -count=1 ./...

# machqd SIGKILLed at random moments under load, started again each time
# on the same data directory (docs/RELIABILITY.md, "Durable queues"); under
# half a second a round.
kill_rounds=${KILL_ROUNDS:-300}
if [ "$kill_rounds" != "0" ]; then
  echo "== kill loop ($kill_rounds rounds)"
  MACHQ_KILL_ROUNDS=$kill_rounds go test -race -count=1 -v -timeout 30m -run '^TestDurableKillLoop$' ./internal/integration/
  # The same for a durable queue's consumer groups, a third as many rounds.
  MACHQ_KILL_ROUNDS=$(( (kill_rounds + 2) / 3 )) go test -race -count=1 -timeout 30m -run '^TestDurableGroupsKillLoop$' ./internal/integration/
fi

fuzztime=${FUZZTIME:-500000x}
if [ "$fuzztime" != "0" ]; then
  for pkg in $(go list ./...); do
    dir=$(go list -f '{{.Dir}}' "$pkg")
    for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
      echo "== fuzz $pkg $target ($fuzztime)"
      go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
    done
  done
fi
