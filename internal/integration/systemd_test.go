package integration_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machq/machq/internal/testtool"
)

// TestIntegrationSystemdUnits: the units in contrib/systemd pass
// systemd-analyze verify, as system units and as user units, with no
// warning, and the flags their ExecStart gives machqd are ones it
// accepts.
func TestIntegrationSystemdUnits(t *testing.T) {
	analyze := testtool.Path(t, "systemd-analyze", "scripts/install-test-tools.sh installs systemd")
	src := filepath.Join("..", "..", "contrib", "systemd")
	for _, tc := range []struct {
		dir, binary string
		user        bool
	}{
		{src, "/usr/local/bin/machqd", false},
		{filepath.Join(src, "user"), "%h/go/bin/machqd", true},
	} {
		dir := t.TempDir()
		var units []string
		var execStart string
		for _, name := range []string{"machqd.socket", "machqd.service"} {
			b, err := os.ReadFile(filepath.Join(tc.dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte(tc.binary)) && name == "machqd.service" {
				t.Fatalf("%s does not start %s", filepath.Join(tc.dir, name), tc.binary)
			}
			// verify checks that the executable exists: point it at
			// the one built for the tests.
			b = bytes.ReplaceAll(b, []byte(tc.binary), []byte(bin.machqd))
			for line := range strings.Lines(string(b)) {
				if rest, ok := strings.CutPrefix(line, "ExecStart="); ok {
					execStart = strings.TrimSpace(rest)
				}
			}
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			units = append(units, p)
		}
		args := []string{"verify", "--man=no"}
		if tc.user {
			args = append([]string{"--user"}, args...)
		}
		cmd := exec.Command(analyze, append(args, units...)...)
		rt := filepath.Join(dir, "runtime")
		if err := os.Mkdir(rt, 0o700); err != nil {
			t.Fatal(err)
		}
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if out, err := cmd.Output(); err != nil || stderr.Len() > 0 || len(out) > 0 {
			t.Errorf("systemd-analyze %v: %v\n%s%s", args, err, out, stderr.String())
		}

		// machqd accepts the flags the unit gives it.
		fields := strings.Fields(execStart)
		if len(fields) < 2 || fields[0] != bin.machqd {
			t.Fatalf("ExecStart %q", execStart)
		}
		state := t.TempDir()
		flags := strings.Fields(strings.ReplaceAll(strings.Join(fields[1:], " "), "${STATE_DIRECTORY}", state))
		if out, err := exec.Command(bin.machqd, append(flags, "--check-restart")...).CombinedOutput(); err != nil {
			t.Errorf("machqd %v --check-restart: %v\n%s", flags, err, out)
		}
	}
}
