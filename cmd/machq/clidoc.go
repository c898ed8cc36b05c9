package main

import (
	"io"
	"strings"

	"github.com/machq/machq/internal/clidoc"
)

// collected, while a program description is being made, receives every
// command newCommand makes.
var collected *[]*command

// program describes machq, its commands and their flags as they are
// defined: each command runs with --help and its output discarded, which
// defines its flags and returns before it does anything.
func program() clidoc.Program {
	var made []*command
	collected = &made
	for _, name := range commands {
		if name != "help" {
			run([]string{name, "--help"}, nil, io.Discard, io.Discard)
		}
	}
	collected = nil
	p := clidoc.Program{
		Name:    "machq",
		Summary: "the client of the machq message store: send, retrieve and manage messages",
		Intro: "machq stores and takes messages in a machq server (machqd) on this host: an interactive " +
			"shell, scriptable commands, queue management, a benchmark and a load test. Commands that " +
			"talk to a server reach it by --name NAME (service name, default machq) or --socket PATH. " +
			"Without a command it runs the shell.",
	}
	for _, c := range made {
		p.Commands = append(p.Commands, clidoc.Command{Name: c.name, Summary: c.summary, Flags: c.fs})
	}
	if _, status, ok := strings.Cut(usage, "Exit status:\n"); ok {
		p.Tail = append(p.Tail, "exit status\n"+strings.TrimRight(status, "\n"))
	}
	return p
}

const completionSummary = `Prints the completion script of machq for a shell (bash, zsh or fish), made
from machq's own flags. For example:
  machq completion bash > /etc/bash_completion.d/machq
  machq completion zsh > "${fpath[1]}/_machq"
  machq completion fish > ~/.config/fish/completions/machq.fish`

func completionCmd(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("completion", completionSummary)
	shell := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		shell, args = args[0], args[1:]
	}
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if shell == "" {
		return printUsageError(stderr, &usageError{cmd: "completion", msg: "name one shell: bash, zsh or fish", hint: true})
	}
	if err := clidoc.Completion(stdout, program(), shell); err != nil {
		return printUsageError(stderr, &usageError{cmd: "completion", msg: err.Error()})
	}
	return exitOK
}

const manSummary = `Prints machq's man page (section 1, roff), made from its own commands and
flags. For example: machq man > /usr/local/share/man/man1/machq.1`

func manCmd(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("man", manSummary)
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	clidoc.Man(stdout, program())
	return exitOK
}
