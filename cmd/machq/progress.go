package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// progressFrom is the smallest payload whose copy shows progress: below
// it a copy takes too little time for a bar to tell anything.
const progressFrom = 4 << 20

// progressEvery is how often the bar is redrawn.
const progressEvery = 100 * time.Millisecond

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// showProgress draws on stderr, when it is a terminal and total is at
// least progressFrom, how far a copy of total bytes has come (bytes, rate,
// time left), polling count, until the function it returns is called:
// with ok true it draws the copy complete, else it clears the bar. It
// draws nothing at all when stderr is not a terminal, so that scripts and
// logs never get it.
func showProgress(stderr io.Writer, what string, total int64, count func() int64) (stop func(ok bool)) {
	if total < progressFrom || !isTerminal(stderr) {
		return func(bool) {}
	}
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(progressEvery),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(stderr) }),
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				bar.Set64(min(count(), total))
			}
		}
	})
	return func(ok bool) {
		close(done)
		wg.Wait()
		if ok {
			bar.Set64(total) // completes the bar, which ends its line
			return
		}
		bar.Clear()
	}
}
