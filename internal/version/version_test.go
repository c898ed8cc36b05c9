package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"release", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: Module, Version: "v1.2.0"}}, "v1.2.0 (go1.26.8)"},
		{"checkout", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: Module, Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "1f4c724a9b3e5d6f7a8b9c0d1e2f3a4b5c6d7e8f"},
			{Key: "vcs.time", Value: "2026-12-06T13:40:00Z"},
			{Key: "vcs.modified", Value: "true"},
		}}, "devel 1f4c724a9b3e 2026-12-06T13:40:00Z+modified (go1.26.8)"},
		{"pseudo-version", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: Module, Version: "v0.0.0-20261206135605-2178c8351cb5+dirty"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "2178c8351cb5aaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
			{Key: "vcs.time", Value: "2026-12-06T13:56:05Z"},
			{Key: "vcs.modified", Value: "true"},
		}}, "v0.0.0-20261206135605-2178c8351cb5+dirty (go1.26.8)"},
		{"library", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "example.com/app", Version: "v0.1.0"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "ffffffffffffffffffff"},
		}, Deps: []*debug.Module{{Path: "golang.org/x/sys", Version: "v0.50.0"}, {Path: Module, Version: "v1.3.1"}}}, "v1.3.1 (go1.26.8)"},
		{"replaced", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "example.com/app"},
			Deps: []*debug.Module{{Path: Module, Version: "v1.3.1", Replace: &debug.Module{Path: "../machq", Version: ""}}}}, "devel (go1.26.8)"},
		{"absent", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "example.com/app"}}, "unknown (go1.26.8)"},
	} {
		if got := describe(&tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if s := String(); !strings.Contains(s, "(go") {
		t.Errorf("String() = %q names no Go version", s)
	}
}
