package naming_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/machq/machq/internal/naming"
)

func allowed(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}

func TestValidQueueName(t *testing.T) {
	cases := []struct {
		name  string
		in    string
		ok    bool
		words []string // the error message must contain each
	}{
		{"empty", "", false, []string{"0 bytes"}},
		{"one byte", "a", true, nil},
		{"255 bytes", strings.Repeat("a", 255), true, nil},
		{"256 bytes", strings.Repeat("a", 256), false, []string{"256 bytes"}},
		{"very long", strings.Repeat("b", 100000), false, []string{"100000 bytes"}},
		{"lower", "abcdefghijklmnopqrstuvwxyz", true, nil},
		{"upper", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", true, nil},
		{"digits", "0123456789", true, nil},
		{"dot", ".", true, nil},
		{"dot dot", "..", true, nil},
		{"underscore", "_", true, nil},
		{"dash", "-", true, nil},
		{"leading dash", "-rf", true, nil},
		{"mixed", "Orders.EU_2024-q1", true, nil},
		{"slash", "a/b", false, []string{`'/'`, "byte 1"}},
		{"leading slash", "/etc", false, []string{`'/'`, "byte 0"}},
		{"dot dot slash", "../x", false, []string{`'/'`, "byte 2"}},
		{"space", "a b", false, []string{`' '`, "byte 1"}},
		{"trailing space", "ab ", false, []string{"byte 2"}},
		{"tab", "a\tb", false, []string{`'\t'`}},
		{"newline", "a\n", false, []string{`'\n'`}},
		{"NUL", "a\x00b", false, []string{`'\x00'`, "byte 1"}},
		{"backslash", `a\b`, false, []string{"byte 1"}},
		{"colon", "a:b", false, nil},
		{"at", "a@b", false, nil},
		{"plus", "a+b", false, nil},
		{"star", "a*", false, nil},
		{"non-ASCII", "café", false, []string{"byte 3"}},
		{"non-ASCII only", "日本", false, []string{"byte 0"}},
		{"invalid UTF-8", "a\xff", false, []string{"byte 1"}},
		{"DEL", "a\x7f", false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := naming.ValidQueueName([]byte(c.in))
			if c.ok {
				if err != nil {
					t.Errorf("ValidQueueName(%q) = %v, want nil", c.in, err)
				}
				return
			}
			if !errors.Is(err, naming.ErrBadName) {
				t.Fatalf("ValidQueueName(%.40q) = %v, want ErrBadName", c.in, err)
			}
			for _, w := range c.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ValidQueueName(%.40q) = %q; want it to mention %q", c.in, err, w)
				}
			}
		})
	}
}

func TestValidQueueNameEveryByte(t *testing.T) {
	for i := range 256 {
		c := byte(i)
		err := naming.ValidQueueName([]byte{'q', c, 'q'})
		if allowed(c) && err != nil {
			t.Errorf("byte %#02x refused: %v", c, err)
		}
		if !allowed(c) && !errors.Is(err, naming.ErrBadName) {
			t.Errorf("byte %#02x accepted (%v)", c, err)
		}
	}
}

func TestValidQueueNameLongMessage(t *testing.T) {
	// A long bad name is cut short in the message.
	name := strings.Repeat("x", 200) + "/"
	err := naming.ValidQueueName([]byte(name))
	if !errors.Is(err, naming.ErrBadName) {
		t.Fatalf("err = %v, want ErrBadName", err)
	}
	if strings.Contains(err.Error(), strings.Repeat("x", 65)) {
		t.Errorf("message quotes the whole name: %q", err)
	}
	if !strings.Contains(err.Error(), "byte 200") {
		t.Errorf("message %q does not give the offending offset", err)
	}
}

func TestValidServiceName(t *testing.T) {
	cases := []struct {
		in string
		ok bool
	}{
		{"machq", true},
		{"a", true},
		{"...", true},
		{".hidden", true},
		{"a.b", true},
		{"svc_1-2", true},
		{strings.Repeat("s", 255), true},
		{".", false},
		{"..", false},
		{"", false},
		{strings.Repeat("s", 256), false},
		{"a/b", false},
		{"/", false},
		{"../x", false},
		{"a b", false},
		{"a\x00", false},
		{"é", false},
	}
	for _, c := range cases {
		err := naming.ValidServiceName(c.in)
		if c.ok && err != nil {
			t.Errorf("ValidServiceName(%.40q) = %v, want nil", c.in, err)
		}
		if !c.ok && !errors.Is(err, naming.ErrBadName) {
			t.Errorf("ValidServiceName(%.40q) = %v, want ErrBadName", c.in, err)
		}
	}
	for _, n := range []string{".", ".."} {
		err := naming.ValidServiceName(n)
		if err == nil || !strings.Contains(err.Error(), strconv.Quote(n)) {
			t.Errorf("ValidServiceName(%q) = %v; want an error quoting the name", n, err)
		}
	}
}

func TestValidServiceNameEveryByte(t *testing.T) {
	for i := range 256 {
		c := byte(i)
		err := naming.ValidServiceName(string([]byte{'s', c}))
		if allowed(c) != (err == nil) {
			t.Errorf("ValidServiceName with byte %#02x = %v", c, err)
		}
	}
}

func TestRuntimeDir(t *testing.T) {
	t.Run("MACHQ_RUNTIME_DIR wins", func(t *testing.T) {
		t.Setenv("MACHQ_RUNTIME_DIR", "/srv/machq-run")
		t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
		if got := naming.RuntimeDir(); got != "/srv/machq-run" {
			t.Errorf("RuntimeDir = %q, want /srv/machq-run", got)
		}
	})
	t.Run("XDG_RUNTIME_DIR", func(t *testing.T) {
		t.Setenv("MACHQ_RUNTIME_DIR", "")
		t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
		if got := naming.RuntimeDir(); got != "/run/user/1000/machq" {
			t.Errorf("RuntimeDir = %q, want /run/user/1000/machq", got)
		}
	})
	t.Run("fallback", func(t *testing.T) {
		t.Setenv("MACHQ_RUNTIME_DIR", "")
		t.Setenv("XDG_RUNTIME_DIR", "")
		want := filepath.Join(os.TempDir(), "machq-"+strconv.Itoa(os.Geteuid()))
		if os.Geteuid() == 0 {
			want = "/run/machq"
		}
		if got := naming.RuntimeDir(); got != want {
			t.Errorf("RuntimeDir = %q, want %q", got, want)
		}
	})
}

func TestSocketPath(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("MACHQ_RUNTIME_DIR", dir)
	got, err := naming.SocketPath("jobs")
	if err != nil || got != filepath.Join(dir, "jobs.sock") {
		t.Errorf("SocketPath(jobs) = %q, %v; want %q", got, err, filepath.Join(dir, "jobs.sock"))
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b"} {
		if p, err := naming.SocketPath(bad); !errors.Is(err, naming.ErrBadName) || p != "" {
			t.Errorf("SocketPath(%q) = %q, %v; want ErrBadName", bad, p, err)
		}
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("MACHQ_RUNTIME_DIR", dir)
	cases := []struct {
		target string
		want   string
		bad    bool
	}{
		{"", filepath.Join(dir, naming.DefaultService+".sock"), false},
		{"machq", filepath.Join(dir, "machq.sock"), false},
		{"other", filepath.Join(dir, "other.sock"), false},
		{"/run/x/y.sock", "/run/x/y.sock", false},
		{"rel/dir.sock", "rel/dir.sock", false},
		{"./here", "./here", false},
		{"../up", "../up", false},
		{"/", "/", false},
		{"a path/with space", "a path/with space", false},
		{"bad name", "", true},
		{".", "", true},
		{"..", "", true},
		{"x.sock\x00", "", true},
	}
	for _, c := range cases {
		got, err := naming.Resolve(c.target)
		if c.bad {
			if !errors.Is(err, naming.ErrBadName) {
				t.Errorf("Resolve(%q) = %q, %v; want ErrBadName", c.target, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", c.target, got, err, c.want)
		}
	}
	if naming.DefaultService != "machq" {
		t.Errorf("DefaultService = %q", naming.DefaultService)
	}
}
