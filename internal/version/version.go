// Package version says which build of machq is running, from what the Go
// toolchain records in every binary: the module's version, and for a
// build from a checkout the revision, its time and whether the tree had
// changes.
package version

import (
	"runtime/debug"
	"strings"
)

// Module is the path of machq's module.
const Module = "github.com/machq/machq"

// String describes this build of machq, for example
// "v1.2.0 (go1.26.8)" for a released module,
// "v0.0.0-20261206134000-1f4c724a9b3e+dirty (go1.26.8)" for a build from a
// checkout (Go 1.24 and later), or "devel 1f4c724a9b3e
// 2026-12-06T13:40:00Z+modified (go1.26.8)" where the toolchain gave no
// pseudo-version, and "devel (go1.26.8)" built with -buildvcs=false.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (built without module information)"
	}
	return describe(bi)
}

// describe is String for the build information bi: machq's own module,
// whether it is the main module (the machq binaries) or a dependency (a
// program that uses the library).
func describe(bi *debug.BuildInfo) string {
	mod := &bi.Main
	if mod.Path != Module {
		mod = nil
		for _, d := range bi.Deps {
			if d.Path == Module {
				mod = d
				if d.Replace != nil {
					mod = d.Replace
				}
				break
			}
		}
	}
	var b strings.Builder
	switch {
	case mod == nil:
		b.WriteString("unknown")
	case mod.Version == "" || mod.Version == "(devel)":
		b.WriteString("devel")
	default:
		b.WriteString(mod.Version)
	}
	if mod != nil && mod == &bi.Main {
		// Only the main module's build carries the revision.
		var rev, at string
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		// Go 1.24 and later give a build from a checkout a
		// pseudo-version that already names the revision (and ends in
		// +dirty for a modified tree).
		if rev != "" && !strings.Contains(b.String(), rev[:min(12, len(rev))]) {
			b.WriteString(" " + rev[:min(12, len(rev))])
			if at != "" {
				b.WriteString(" " + at)
			}
			if modified {
				b.WriteString("+modified")
			}
		}
	}
	b.WriteString(" (" + bi.GoVersion + ")")
	return b.String()
}
