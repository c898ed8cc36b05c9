package integration_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/testtool"
)

// The Python client in examples/python was written from docs/PROTOCOL.md
// alone. These tests run it against a real machqd: its self-test, from
// the source tree and as a package installed into a virtual environment,
// and messages passed between it and the Go library in both directions.

// pythonTimeout bounds each Python program; the self-test moves 34 MiB
// through a race-enabled server.
const pythonTimeout = 3 * time.Minute

// pythonExamples returns the absolute path of examples/python. The test
// runs in internal/integration.
func pythonExamples(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "examples", "python"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "machq.py")); err != nil {
		t.Fatalf("the Python client is missing: %v", err)
	}
	return dir
}

// runPython runs python3 with args (a script, or -c and a program) with
// examples/python on PYTHONPATH, and returns what it printed. It fails t
// with that output if the program fails or overruns pythonTimeout.
func runPython(t *testing.T, python, dir string, args ...string) string {
	t.Helper()
	// -B: write no __pycache__ into the source tree.
	env := append(pythonEnv(), "PYTHONPATH="+dir, "PYTHONDONTWRITEBYTECODE=1")
	return runCommand(t, "", env, append([]string{python, "-B"}, args...)...)
}

// checkSelfTest fails t unless out, what examples/python/selftest.py
// printed (run as a script or under unittest), reports every check passed
// and says it tested the module machq at the path module. It returns the
// number of checks that passed.
func checkSelfTest(t *testing.T, out, module string) int {
	t.Helper()
	lines := "\n" + out
	if !strings.Contains(lines, "\n0 failure(s)\n") || strings.Contains(lines, "\nFAIL") {
		t.Fatalf("the self-test exited 0 but did not report success:\n%s", out)
	}
	// "client machq VERSION from PATH"; under unittest -v it follows the
	// test's name on its line.
	_, tested, _ := strings.Cut(out, "client machq ")
	tested, _, _ = strings.Cut(tested, "\n")
	_, file, ok := strings.Cut(tested, " from ")
	if !ok {
		t.Fatalf("the self-test did not say which module machq it tested:\n%s", out)
	}
	fi1, err1 := os.Stat(file)
	fi2, err2 := os.Stat(module)
	if err1 != nil || err2 != nil || !os.SameFile(fi1, fi2) {
		t.Fatalf("the self-test tested machq %s, want the one from %s", tested, module)
	}
	return strings.Count(lines, "\nok ")
}

// TestIntegrationPythonClient runs examples/python/selftest.py, which
// checks the Python client and the protocol document against the server:
// round trips inline and as sealed memfds, errors, waiting, CANCEL, STATS,
// digest checks, acknowledged delivery, PEEK, PURGE, DELETE, consumer
// groups and CONFIG.
func TestIntegrationPythonClient(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	d := startDaemon(t, "", "--log-level", "warn")

	out := runPython(t, python, dir, filepath.Join(dir, "selftest.py"), d.socket)
	t.Logf("selftest.py: %d checks passed", checkSelfTest(t, out, filepath.Join(dir, "machq.py")))
}

// TestIntegrationPythonWaitingStore runs the checks of examples/python/
// selftest.py for STORE's WAIT flag (section 6.3 of docs/PROTOCOL.md)
// against a server whose named queues hold at most two messages: a store
// into a full queue waits for room and is stored once a message leaves,
// in the order the stores came; a cancelled one, one whose queue is
// deleted and one whose connection ends store nothing; with consumer
// groups a store waits while any group is full. It runs them as its
// README says, through unittest's discovery in examples/python, which
// finds test_machq.py.
func TestIntegrationPythonWaitingStore(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	const limit = "2"
	d := startDaemon(t, "", "--log-level", "warn", "--max-queue-messages", limit)

	env := append(pythonEnv(), "PYTHONDONTWRITEBYTECODE=1",
		"MACHQ_TEST_SOCKET="+d.socket, "MACHQ_TEST_MAX_QUEUE_MESSAGES="+limit)
	out := runCommand(t, dir, env, python, "-B", "-m", "unittest", "-v")
	checkUnittest(t, out)
	n := checkSelfTest(t, out, filepath.Join(dir, "machq.py"))
	if w := strings.Count("\n"+out, "\nok    WAIT:"); w < 5 {
		t.Fatalf("the self-test ran %d checks of the WAIT flag, want 5:\n%s", w, out)
	}
	t.Logf("python3 -m unittest, MACHQ_TEST_MAX_QUEUE_MESSAGES=%s: %d checks passed", limit, n)
}

// checkUnittest fails t unless out, what python -m unittest printed, says
// it ran the one test, test_machq.py's, and that it passed.
func checkUnittest(t *testing.T, out string) {
	t.Helper()
	lines := "\n" + out
	if !strings.Contains(lines, "\nRan 1 test in ") || !strings.Contains(lines, "\nOK\n") {
		t.Fatalf("python -m unittest exited 0 but did not run and pass test_machq.py:\n%s", out)
	}
}

// pythonEnv returns the environment for the Python programs and pip
// without what would change where modules come from, or how pip behaves:
// PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, and every PIP_ setting.
func pythonEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "PYTHONPATH", name == "PYTHONHOME", name == "PYTHONSTARTUP",
			strings.HasPrefix(name, "PIP_"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

// runCommand runs the program args[0] with the other args in dir with the
// environment env, and returns what it printed. It fails t with that
// output if the program fails or overruns pythonTimeout.
func runCommand(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pythonTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir, cmd.Env = dir, env
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (killed after %v)", err, pythonTimeout)
		}
		t.Fatalf("%s: %v; output:\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// pythonBuildProbe prints what a Python lacks to build and install the
// package in examples/python offline, without build isolation (an empty
// line if nothing): pip, and setuptools 61 or later (the first to read
// PEP 621 metadata from pyproject.toml), which before 70.1 builds wheels
// with the package wheel. It looks modules up without importing them.
const pythonBuildProbe = `
import importlib.util, re, sys
missing = []
if sys.version_info < (3, 9):
    missing.append("Python 3.9 or later (this is %d.%d)" % sys.version_info[:2])
else:
    from importlib.metadata import version
    for m in ("pip", "setuptools"):
        if importlib.util.find_spec(m) is None:
            missing.append(m)
    if importlib.util.find_spec("setuptools") is not None:
        v = version("setuptools")
        n = tuple(int(x) for x in re.findall(r"[0-9]+", v)[:2])
        if n < (61,):
            missing.append("setuptools 61 or later (this is %s)" % v)
        elif n < (70, 1) and importlib.util.find_spec("wheel") is None:
            missing.append("wheel (setuptools %s builds wheels with it)" % v)
print(", ".join(missing))
`

// pythonVenv creates a virtual environment in dir, from the first python3
// on PATH that can build and install the package in examples/python
// offline, and returns the path of the environment's python. The
// environment sees the system's site-packages: its pip, setuptools and
// wheel build the package (a new environment's own pip would need
// ensurepip, and on Python 3.12 and later has no setuptools); what is
// installed into it goes into its own. Without such a python3, t is
// skipped (failed with MACHQ_TEST_REQUIRE_TOOLS=1).
func pythonVenv(t *testing.T, dir string) string {
	t.Helper()
	testtool.Path(t, "python3", "apt-get install python3")
	var lacks []string
	seen := make(map[string]bool)
	for _, bindir := range filepath.SplitList(os.Getenv("PATH")) {
		python := filepath.Join(bindir, "python3")
		if fi, err := os.Stat(python); bindir == "" || err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			continue
		}
		if real, err := filepath.EvalSymlinks(python); err != nil || seen[real] {
			continue
		} else {
			seen[real] = true
		}
		venv := filepath.Join(dir, fmt.Sprintf("venv%d", len(seen)))
		cmd := exec.Command(python, "-m", "venv", "--system-site-packages", "--without-pip", venv)
		cmd.Env = pythonEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			lacks = append(lacks, fmt.Sprintf("%s -m venv: %v: %s", python, err, bytes.TrimSpace(out)))
			continue
		}
		vpython := filepath.Join(venv, "bin", "python")
		cmd = exec.Command(vpython, "-c", pythonBuildProbe)
		cmd.Env = pythonEnv()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s -c pythonBuildProbe: %v", vpython, err)
		}
		if missing := strings.TrimSpace(string(out)); missing != "" {
			lacks = append(lacks, python+" lacks "+missing)
			continue
		}
		for _, l := range lacks {
			t.Logf("passed over %s", l)
		}
		t.Logf("building with %s", python)
		return vpython
	}
	testtool.Missing(t, "a python3 with pip, setuptools and wheel",
		"apt-get install python3-pip, which brings python3-setuptools and python3-wheel; "+
			strings.Join(lacks, "; "))
	return ""
}

// pythonArtefacts lists what building or installing the package, or
// running Python, may write into dir: build/, dist/, *.egg-info and
// __pycache__, at any depth.
func pythonArtefacts(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := e.Name()
		if path != dir && (name == "build" || name == "dist" || name == "__pycache__" ||
			strings.HasSuffix(name, ".egg-info")) {
			found = append(found, path)
			if e.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// copyPythonSources copies the files of src into dst, leaving out what
// pythonArtefacts lists.
func copyPythonSources(t *testing.T, src, dst string) {
	t.Helper()
	skip := make(map[string]bool)
	for _, p := range pythonArtefacts(t, src) {
		skip[p] = true
	}
	err := filepath.WalkDir(src, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skip[path] {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		switch {
		case e.IsDir():
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		case e.Type().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationPythonPackage builds examples/python as a package, a
// wheel, offline (pip wheel --no-index --no-build-isolation, from a copy:
// setuptools writes build/ and machq.egg-info/ where it builds), installs
// the wheel into a fresh virtual environment, and runs the self-test
// with the environment's python, through unittest, from a directory
// holding only selftest.py and test_machq.py: the module machq it tests
// must be the one installed in the environment.
func TestIntegrationPythonPackage(t *testing.T) {
	dir := pythonExamples(t)
	before := pythonArtefacts(t, dir)
	tmp := t.TempDir()
	python := pythonVenv(t, tmp)
	venv := filepath.Dir(filepath.Dir(python))
	d := startDaemon(t, "", "--log-level", "warn")

	src, wheels := filepath.Join(tmp, "src"), filepath.Join(tmp, "wheels")
	copyPythonSources(t, dir, src)
	env := append(pythonEnv(), "PIP_CONFIG_FILE="+os.DevNull, "PIP_NO_INPUT=1",
		"PIP_DISABLE_PIP_VERSION_CHECK=1")
	runCommand(t, tmp, env, python, "-m", "pip", "wheel", "--no-index", "--no-deps",
		"--no-build-isolation", "--no-cache-dir", "--wheel-dir", wheels, src)
	built, err := filepath.Glob(filepath.Join(wheels, "*.whl"))
	if err != nil || len(built) != 1 {
		t.Fatalf("pip wheel built %v, want one wheel (%v)", built, err)
	}
	checkWheel(t, built[0])
	runCommand(t, tmp, env, python, "-m", "pip", "install", "--no-index", "--no-deps",
		"--no-cache-dir", built[0])

	tests := filepath.Join(tmp, "tests")
	if err := os.Mkdir(tests, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"selftest.py", "test_machq.py"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tests, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := runCommand(t, tests, append(pythonEnv(), "MACHQ_TEST_SOCKET="+d.socket),
		python, "-m", "unittest", "-v")
	checkUnittest(t, out)
	site, err := filepath.Glob(filepath.Join(venv, "lib", "python3*", "site-packages", "machq.py"))
	if err != nil || len(site) != 1 {
		t.Fatalf("installed machq.py in %s: %v (%v)", venv, site, err)
	}
	n := checkSelfTest(t, out, site[0])
	t.Logf("installed %s; its self-test: %d checks passed", filepath.Base(built[0]), n)

	if after := pythonArtefacts(t, dir); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("the test left %v in %s (before it: %v)", after, dir, before)
	}
}

// checkWheel fails t unless the wheel at path holds the module machq.py
// and its metadata, nothing else (not the tests), and its metadata asks
// for Python 3.9 and no other package.
func checkWheel(t *testing.T, path string) {
	t.Helper()
	z, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	var names []string
	var metadata string
	for _, f := range z.File {
		names = append(names, f.Name)
		dist, file, _ := strings.Cut(f.Name, "/")
		switch {
		case f.Name == "machq.py":
		case strings.HasPrefix(dist, "machq-") && strings.HasSuffix(dist, ".dist-info"):
			if file == "METADATA" {
				r, err := f.Open()
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(r)
				r.Close()
				if err != nil {
					t.Fatal(err)
				}
				metadata = string(b)
			}
		default:
			t.Errorf("wheel %s holds %s", filepath.Base(path), f.Name)
		}
	}
	if !slices.Contains(names, "machq.py") || metadata == "" {
		t.Fatalf("wheel %s lacks machq.py or its METADATA: %v", filepath.Base(path), names)
	}
	header, _, _ := strings.Cut(metadata, "\n\n")
	if !strings.Contains(header+"\n", "\nRequires-Python: >=3.9\n") || strings.Contains(header, "\nRequires-Dist:") {
		t.Errorf("wheel %s: its metadata asks for other than Python 3.9 and nothing else:\n%s", filepath.Base(path), header)
	}
}

// pyStore stores each size given after the socket and queue: a payload of
// random bytes, SHA-256 digest. It prints "size sha256hex seq" per message.
const pyStore = `
import hashlib, os, sys
import machq

sock, queue = sys.argv[1], sys.argv[2]
with machq.connect(sock, timeout=60) as c:
    for size in map(int, sys.argv[3:]):
        data = os.urandom(size)
        seq = c.store(data, queue)
        print(size, hashlib.sha256(data).hexdigest(), seq)
`

// pyRetrieve retrieves the number of messages given after the socket and
// queue; Client.retrieve verifies each digest. It prints, per message,
// "size sha256hex seq form digest_alg digesthex".
const pyRetrieve = `
import hashlib, sys
import machq

sock, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with machq.connect(sock, timeout=60) as c:
    for _ in range(n):
        m = c.retrieve(queue)
        print(len(m.data), hashlib.sha256(m.data).hexdigest(), m.seq,
              "inline" if m.inline else "memfd", m.digest_alg, m.digest.hex())
`

// TestIntegrationPythonInterop passes messages between the Python client
// and the Go library through named queues, inline and as pages: each side
// verifies the other's SHA-256 digests.
func TestIntegrationPythonInterop(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	d := startDaemon(t, "", "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), pythonTimeout)
	defer cancel()
	c, err := machq.Dial(ctx, d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	t.Run("PythonToGo", func(t *testing.T) {
		// 1000 B travels inline, 3 MiB + 1 as a sealed memfd (the Python
		// client's inline threshold is 64 KiB).
		sizes := []int{1000, 3<<20 + 1}
		args := []string{"-c", pyStore, d.socket, "py-to-go"}
		for _, n := range sizes {
			args = append(args, strconv.Itoa(n))
		}
		out := runPython(t, python, dir, args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(sizes) {
			t.Fatalf("Python printed %d lines, want %d:\n%s", len(lines), len(sizes), out)
		}
		for i, line := range lines {
			var size int64
			var sum string
			var seq uint64
			if _, err := fmt.Sscan(line, &size, &sum, &seq); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			m, err := c.Retrieve(ctx, "py-to-go") // verifies the digest Python attached
			if err != nil {
				t.Fatalf("retrieving message %d (%d bytes) stored by Python: %v", i, size, err)
			}
			got := sha256.Sum256(m.Bytes())
			alg, digest := m.Digest()
			switch {
			case m.Len() != size:
				t.Errorf("message %d: %d bytes, Python stored %d", i, m.Len(), size)
			case hex.EncodeToString(got[:]) != sum:
				t.Errorf("message %d: SHA-256 %x, Python stored %s", i, got, sum)
			case alg != machq.DigestSHA256 || hex.EncodeToString(digest) != sum:
				t.Errorf("message %d: attached digest %v %x, want SHA-256 %s", i, alg, digest, sum)
			case m.Seq != seq:
				t.Errorf("message %d: seq %d, STORED told Python %d", i, m.Seq, seq)
			case m.OutOfLine() != (size > 64<<10):
				t.Errorf("message %d (%d bytes): out of line %v", i, size, m.OutOfLine())
			}
			m.Close()
		}
	})

	t.Run("GoToPython", func(t *testing.T) {
		// 5 MiB travels as a page, 100 B inline (the Go client's default
		// threshold is 64 KiB).
		payloads := [][]byte{make([]byte, 5<<20), make([]byte, 100)}
		for _, p := range payloads {
			rand.Read(p)
			if _, err := c.Send(ctx, "go-to-py", p); err != nil {
				t.Fatal(err)
			}
		}
		out := runPython(t, python, dir, "-c", pyRetrieve, d.socket, "go-to-py", strconv.Itoa(len(payloads)))
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(payloads) {
			t.Fatalf("Python printed %d lines, want %d:\n%s", len(lines), len(payloads), out)
		}
		for i, line := range lines {
			var size, alg int
			var sum, form, digest string
			var seq uint64
			if _, err := fmt.Sscan(line, &size, &sum, &seq, &form, &alg, &digest); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			want := sha256.Sum256(payloads[i])
			wantForm := "inline"
			if len(payloads[i]) > 64<<10 {
				wantForm = "memfd"
			}
			switch {
			case size != len(payloads[i]):
				t.Errorf("message %d: Python got %d bytes, Go sent %d", i, size, len(payloads[i]))
			case sum != hex.EncodeToString(want[:]):
				t.Errorf("message %d: Python got SHA-256 %s, Go sent %x", i, sum, want)
			case alg != int(machq.DigestSHA256) || digest != sum:
				t.Errorf("message %d: Python saw digest algorithm %d, digest %s; want SHA-256 %s", i, alg, digest, sum)
			case form != wantForm:
				t.Errorf("message %d (%d bytes): travelled %s, want %s", i, size, form, wantForm)
			}
		}
	})
}

// pyReserve takes the number of messages given after the socket and queue
// in ack mode (version 3), waiting up to 10 s for each, verifies each
// digest (Client.reserve does), then settles them all as told: "ack", or
// "nak" with the reason given after it. (Holding them all first keeps a
// NAKed message from coming back before the next is taken.) It prints,
// per message, "size sha256hex seq deliveries outcome" and, last, the
// note of the last message (an empty line if none).
const pyReserve = `
import hashlib, sys
import machq

sock, queue, n, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
reason = sys.argv[5] if len(sys.argv) > 5 else ""
with machq.connect(sock, timeout=60) as c:
    assert c.version == 3, c.version
    held = [c.reserve(queue, wait_ms=10000) for _ in range(n)]
    for d in held:
        outcome = d.ack() if how == "ack" else d.nak(reason=reason)
        print(len(d.payload), hashlib.sha256(d.payload).hexdigest(), d.seq, d.deliveries, outcome)
    print(held[-1].note)
`

// TestIntegrationPythonAckInterop passes messages between the Go library
// and the Python client in ack mode: what Python acknowledges is gone for
// Go, what Python NAKs comes back to Go at its place as a redelivery with
// Python's reason, and what Go NAKs comes to Python marked likewise.
func TestIntegrationPythonAckInterop(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	d := startDaemon(t, "", "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), pythonTimeout)
	defer cancel()
	c, err := machq.Dial(ctx, d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// send stores 100 B (inline) and 200 KiB (a page) into queue.
	send := func(t *testing.T, queue string) [][]byte {
		t.Helper()
		payloads := [][]byte{make([]byte, 100), make([]byte, 200<<10)}
		for _, p := range payloads {
			rand.Read(p)
			if _, err := c.Send(ctx, queue, p); err != nil {
				t.Fatal(err)
			}
		}
		return payloads
	}
	// reserve runs pyReserve and returns its message lines and the note.
	reserve := func(t *testing.T, queue string, n int, how ...string) ([]string, string) {
		t.Helper()
		args := append([]string{"-c", pyReserve, d.socket, queue, strconv.Itoa(n)}, how...)
		out := runPython(t, python, dir, args...)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != n+1 {
			t.Fatalf("Python printed %d lines, want %d:\n%s", len(lines), n+1, out)
		}
		return lines[:n], lines[n]
	}
	// check compares a pyReserve line with the payload Go sent.
	check := func(t *testing.T, i int, line string, payload []byte, deliveries, outcome int) {
		t.Helper()
		var size, n, o int
		var sum string
		var seq uint64
		if _, err := fmt.Sscan(line, &size, &sum, &seq, &n, &o); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		want := sha256.Sum256(payload)
		switch {
		case size != len(payload) || sum != hex.EncodeToString(want[:]):
			t.Errorf("message %d: Python got %d bytes, SHA-256 %s; Go sent %d, %x", i, size, sum, len(payload), want)
		case n != deliveries:
			t.Errorf("message %d: Python saw deliveries %d, want %d", i, n, deliveries)
		case o != outcome:
			t.Errorf("message %d: settled with outcome %d, want %d", i, o, outcome)
		}
	}

	t.Run("PythonAcks", func(t *testing.T) {
		payloads := send(t, "ack-py-acks")
		lines, _ := reserve(t, "ack-py-acks", len(payloads), "ack")
		for i, line := range lines {
			check(t, i, line, payloads[i], 1, 0)
		}
		if q := queueStats(d, "ack-py-acks"); q.Messages != 0 || q.Pending != 0 || q.Delayed != 0 {
			t.Errorf("after Python's ACKs the queue holds %+v, want nothing", q)
		}
		if _, err := c.Reserve(ctx, "ack-py-acks", nil); !errors.Is(err, machq.ErrEmpty) {
			t.Errorf("Reserve after Python's ACKs: %v, want ErrEmpty", err)
		}
	})

	t.Run("PythonNaks", func(t *testing.T) {
		payloads := send(t, "ack-py-naks")
		lines, _ := reserve(t, "ack-py-naks", len(payloads), "nak", "python cannot use it")
		for i, line := range lines {
			check(t, i, line, payloads[i], 1, 1)
		}
		// Back at their places after the server's backoff, in order.
		for i, p := range payloads {
			dl, err := c.ReserveWait(ctx, "ack-py-naks", nil)
			if err != nil {
				t.Fatalf("message %d NAKed by Python: %v", i, err)
			}
			switch {
			case !bytes.Equal(dl.Bytes(), p):
				t.Errorf("message %d: Go got other bytes back than it sent", i)
			case dl.Deliveries() != 2:
				t.Errorf("message %d: Deliveries() = %d, want 2", i, dl.Deliveries())
			case dl.Note() != "python cannot use it":
				t.Errorf("message %d: Note() = %q, want Python's NAK reason", i, dl.Note())
			}
			if err := dl.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			dl.Close()
		}
	})

	t.Run("GoNaks", func(t *testing.T) {
		payloads := send(t, "ack-go-naks")
		var held []*machq.Delivery
		for range payloads { // all held before the first NAK: none comes back meanwhile
			dl, err := c.ReserveWait(ctx, "ack-go-naks", nil)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, dl)
		}
		for _, dl := range held {
			if err := dl.Nak(ctx, 0, "go says later"); err != nil {
				t.Fatal(err)
			}
			dl.Close()
		}
		lines, note := reserve(t, "ack-go-naks", len(payloads), "ack")
		for i, line := range lines {
			check(t, i, line, payloads[i], 2, 0)
		}
		if note != "go says later" {
			t.Errorf("Python saw note %q, want Go's NAK reason", note)
		}
	})
}
