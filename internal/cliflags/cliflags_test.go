package cliflags

import (
	"bytes"
	"flag"
	"testing"
)

func TestPrintDefaults(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("name", "machq", "service `name` of the server")
	fs.Bool("owned", false, "a queue this creates is yours")
	fs.Duration("wait", 0, "wait up to this `duration`")
	fs.Int("depth", 16, "pipeline `depth`")
	var b bytes.Buffer
	PrintDefaults(&b, fs)
	want := `  --depth depth
    	pipeline depth (default 16)
  --name name
    	service name of the server (default "machq")
  --owned
    	a queue this creates is yours
  --wait duration
    	wait up to this duration
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
