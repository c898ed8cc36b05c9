package clidoc

import (
	"bytes"
	"flag"
	"os/exec"
	"strings"
	"testing"

	"github.com/machq/machq/internal/testtool"
)

func sample() Program {
	top := flag.NewFlagSet("tool", flag.ContinueOnError)
	top.Bool("version", false, "print the version and exit")
	send := flag.NewFlagSet("send", flag.ContinueOnError)
	send.String("queue", "", "named `queue` to store into (required)")
	send.String("file", "", "send this `file` instead of stdin")
	send.Bool("owned", false, "a queue this creates is yours: [it's] yours")
	stat := flag.NewFlagSet("stat", flag.ContinueOnError)
	stat.Bool("json", false, "print the server's JSON document")
	return Program{
		Name: "tool", Summary: "a tool", Intro: "Tool does things.\n.A line that looks like a request.",
		Flags:    top,
		Commands: []Command{{Name: "send", Summary: "Stores stdin.\nMore.", Flags: send}, {Name: "stat", Summary: "Shows it.", Flags: stat}},
		Tail:     []string{"exit status\n0 success\n1 failure"},
	}
}

// TestBashCompletes sources the bash script and completes with it.
func TestBashCompletes(t *testing.T) {
	bashPath, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	var b bytes.Buffer
	if err := Completion(&b, sample(), "bash"); err != nil {
		t.Fatal(err)
	}
	complete := func(words ...string) string {
		t.Helper()
		script := b.String() + `
COMP_WORDS=(` + strings.Join(words, " ") + `)
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_tool
echo "${COMPREPLY[@]}"
`
		out, err := exec.Command(bashPath, "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := complete("tool", "s"); got != "send stat" {
		t.Errorf("commands: %q", got)
	}
	if got := complete("tool", "send", "--"); got != "--file --owned --queue --help" {
		t.Errorf("send's flags: %q", got)
	}
	if got := complete("tool", "stat", "--j"); got != "--json" {
		t.Errorf("stat's flags: %q", got)
	}
}

func TestZshAndFish(t *testing.T) {
	var z, f bytes.Buffer
	if err := Completion(&z, sample(), "zsh"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"#compdef tool", "'send:Stores stdin'", `'--queue=[named queue to store into]:queue: '`, `'--file=[send this file instead of stdin]:file:_files'`, `'--owned[a queue this creates is yours\: \[it'\''s\] yours]'`} {
		if !strings.Contains(z.String(), want) {
			t.Errorf("zsh script lacks %s:\n%s", want, z.String())
		}
	}
	if err := Completion(&f, sample(), "fish"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"complete -c tool -n '__fish_use_subcommand' -a send -d 'Stores stdin'", "complete -c tool -n '__fish_seen_subcommand_from send' -l file -d 'send this file instead of stdin' -r -F", `-l owned -d 'a queue this creates is yours: [it\'s] yours'`} {
		if !strings.Contains(f.String(), want) {
			t.Errorf("fish script lacks %s:\n%s", want, f.String())
		}
	}
	if err := Completion(&f, sample(), "tcsh"); err == nil || !strings.Contains(err.Error(), "bash, zsh, fish") {
		t.Errorf("an unknown shell: %v", err)
	}
}

func TestMan(t *testing.T) {
	var b bytes.Buffer
	Man(&b, sample())
	page := b.String()
	for _, want := range []string{
		`.TH TOOL 1`,
		".SH NAME\ntool \\- a tool\n",
		"\\&.A line that looks like a request.",
		".SS send\n",
		".TP\n.B \\-\\-queue \\fIqueue\\fR\nnamed queue to store into (required)\n",
		".SH OPTIONS\n.TP\n.B \\-\\-version\n",
		".SH EXIT STATUS\n.nf\n0 success\n1 failure\n.fi\n",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("man page lacks %q:\n%s", want, page)
		}
	}
	if out := testtool.RenderMan(t, page); !strings.Contains(out, "named queue to store into") {
		t.Errorf("the page renders as:\n%s", out)
	}
}
