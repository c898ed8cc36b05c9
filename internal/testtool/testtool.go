// Package testtool finds the programs outside this module that some tests
// run: redis-server, systemd-socket-activate, python3, man. Where one is
// missing the test is skipped with the command that installs it, unless
// the environment variable MACHQ_TEST_REQUIRE_TOOLS is 1 (as in CI, which
// installs them), which makes a missing program a failure instead: a test
// that must run cannot pass by skipping.
package testtool

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireEnv is the environment variable that turns a missing program
// from a skip into a failure.
const RequireEnv = "MACHQ_TEST_REQUIRE_TOOLS"

// Path returns the path of program on PATH. When it is missing, t is
// skipped (or, with MACHQ_TEST_REQUIRE_TOOLS=1, failed) with a message
// that says how to install it.
func Path(t testing.TB, program, install string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err == nil {
		return path
	}
	Missing(t, program, install)
	return ""
}

// Missing skips t (or fails it, with MACHQ_TEST_REQUIRE_TOOLS=1) because
// program is not installed; install says how to install it.
func Missing(t testing.TB, program, install string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s is not installed and %s=1 requires it: %s", program, RequireEnv, install)
	}
	t.Skipf("%s is not installed (%s); skipping", program, install)
}

// RenderMan renders the roff man page with man(1) and returns the text,
// failing t if man reports anything on stderr or fails.
func RenderMan(t testing.TB, page string) string {
	t.Helper()
	man := Path(t, "man", "scripts/install-test-tools.sh installs man-db")
	cmd := exec.Command(man, "-l", "-")
	cmd.Stdin = strings.NewReader(page)
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=100")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("man -l: %v\n%s", err, stderr.String())
	}
	return string(out)
}
