package integration_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machq/machq/internal/testtool"
)

// complete sources the bash completion script and completes words with
// it, returning the candidates.
func complete(t *testing.T, script, fn string, words ...string) []string {
	t.Helper()
	bash := testtool.Path(t, "bash", "install bash")
	prog := script + "\nCOMP_WORDS=(" + strings.Join(words, " ") + ")\nCOMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n" + fn + "\necho \"${COMPREPLY[@]}\"\n"
	out, err := exec.Command(bash, "-c", prog).CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

// TestIntegrationCompletionAndMan: both binaries print completion scripts
// for bash, zsh and fish and a man page made from the flags they define
// now, so none can drift: what bash completes is what the program
// accepts, and the man pages render.
func TestIntegrationCompletionAndMan(t *testing.T) {
	output := func(bin string, args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).Output()
		if err != nil {
			t.Fatalf("%s %v: %v", filepath.Base(bin), args, err)
		}
		return string(out)
	}
	script := output(bin.machq, "completion", "bash")
	if got := complete(t, script, "_machq", "machq", "se"); strings.Join(got, " ") != "send" {
		t.Errorf("machq se: %v", got)
	}
	got := complete(t, script, "_machq", "machq", "send", "--")
	for _, want := range []string{"--queue", "--file", "--digest", "--socket", "--help"} {
		if !strings.Contains(" "+strings.Join(got, " ")+" ", " "+want+" ") {
			t.Errorf("machq send --: %v lacks %s", got, want)
		}
	}
	if strings.Contains(strings.Join(got, " "), "--json") {
		t.Errorf("machq send --: %v offers stat's --json", got)
	}
	// Every flag offered is one the command accepts.
	for _, f := range complete(t, script, "_machq", "machq", "stat", "--") {
		if f == "--help" {
			continue
		}
		r := runCLI(t, nil, "stat", f+"=x", "--socket", "/nonexistent/s")
		if strings.Contains(r.stderr, "flag provided but not defined") || strings.Contains(r.stderr, "unknown flag") {
			t.Errorf("completion offers %s, which machq stat does not accept: %s", f, r.stderr)
		}
	}
	d := output(bin.machqd, "--completion", "bash")
	if got := complete(t, d, "_machqd", "machqd", "--spin"); strings.Join(got, " ") != "--spin --spin-readers" {
		t.Errorf("machqd --spin: %v", got)
	}
	for _, shell := range []string{"zsh", "fish"} {
		for _, b := range []string{bin.machq, bin.machqd} {
			args := []string{"completion", shell}
			if b == bin.machqd {
				args = []string{"--completion", shell}
			}
			if out := output(b, args...); !strings.Contains(out, "--socket") && !strings.Contains(out, "-l socket") {
				t.Errorf("%s %v names no --socket:\n%s", filepath.Base(b), args, out)
			}
		}
	}

	for _, tc := range []struct {
		bin  string
		args []string
		want []string
	}{
		{bin.machq, []string{"man"}, []string{"MACHQ(1)", "retrieve", "--require-digest", "EXIT STATUS"}},
		{bin.machqd, []string{"--man"}, []string{"MACHQD(1)", "--max-stored-bytes", "--spin", "SIGNALS"}},
	} {
		out := testtool.RenderMan(t, output(tc.bin, tc.args...))
		for _, want := range tc.want {
			if !strings.Contains(out, want) {
				t.Errorf("the man page of %s lacks %q", filepath.Base(tc.bin), want)
			}
		}
	}
	if r := runCLI(t, nil, "completion", "tcsh"); r.code != 2 || !strings.Contains(r.stderr, "bash, zsh, fish") {
		t.Errorf("machq completion tcsh: exit %d, %q", r.code, r.stderr)
	}
}
