// Package integration holds the end-to-end tests: they build machqd and
// machq, run them as real processes, and talk to them over real sockets.
package integration
