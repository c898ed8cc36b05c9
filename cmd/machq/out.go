package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// output is where retrieve writes a payload: stdout; a regular file,
// written under a temporary name and renamed into place so that a reader
// never sees half a payload; or anything else that can be opened for
// writing (a FIFO, a terminal, a device), written in place.
type output struct {
	w      io.Writer
	tmp    *os.File // the temporary file renamed to target by commit
	target string   // the regular file tmp creates or replaces
	f      *os.File // a FIFO or device opened for writing
	done   bool
}

// openOut prepares --out path (stdout when path is empty) before a message
// is taken, so that a payload that could not be written is never taken
// from its queue. A symbolic link is followed to its target, to which the
// same rules apply. A new file gets mode 0666 less the umask, as the
// shell's redirection gives it; a regular file replaced keeps its mode.
// Opening a FIFO waits for a reader, or for ctx to end.
func openOut(ctx context.Context, path string, stdout io.Writer) (*output, error) {
	if path == "" {
		return &output{w: stdout}, nil
	}
	target, fi, err := resolveOut(path)
	if err != nil {
		return nil, outError(path, err)
	}
	switch {
	case fi == nil || fi.Mode().IsRegular():
		perm := os.FileMode(0o666) // less the umask, applied by open(2)
		if fi != nil {
			// Replacing a file is writing to it: refuse what a redirection
			// would refuse, rather than replace a read-only file.
			if err := unix.Access(target, unix.W_OK); err != nil {
				return nil, outError(path, err)
			}
			perm = 0o600 // until chmod below: nobody else reads it meanwhile
		}
		tmp, err := createTemp(filepath.Dir(target), filepath.Base(target), perm)
		if err != nil {
			return nil, outError(path, err)
		}
		if fi != nil {
			if err := tmp.Chmod(fi.Mode().Perm()); err != nil {
				tmp.Close()
				os.Remove(tmp.Name())
				return nil, outError(path, err)
			}
		}
		return &output{w: tmp, tmp: tmp, target: target}, nil
	case fi.IsDir():
		return nil, outError(path, errors.New("is a directory"))
	case fi.Mode()&fs.ModeSocket != 0:
		return nil, outError(path, errors.New("is a socket; give a file, a FIFO or a device"))
	}
	// A FIFO or a device: written in place, never replaced or truncated.
	f, err := await(ctx, func() (*os.File, error) { return os.OpenFile(target, os.O_WRONLY, 0) })
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, outError(path, err)
	}
	return &output{w: f, f: f}, nil
}

// outError says that --out path cannot be written, and why.
func outError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("cannot write --out %s: %w", path, err)
}

// resolveOut follows path through symbolic links. It returns the final
// path and what is there, or a nil FileInfo when nothing is.
func resolveOut(path string) (string, os.FileInfo, error) {
	p := path
	for range 40 { // as many links as Linux follows
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return p, nil, nil
		}
		if err != nil {
			return "", nil, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return p, fi, nil
		}
		link, err := os.Readlink(p)
		if err != nil {
			return "", nil, err
		}
		if !filepath.IsAbs(link) {
			// Not cleaned: ".." in link must go where the kernel takes it.
			link = filepath.Dir(p) + "/" + link
		}
		p = link
	}
	return "", nil, syscall.ELOOP
}

// createTemp creates a new file with mode perm (less the umask) in dir, named
// after base.
func createTemp(dir, base string, perm os.FileMode) (*os.File, error) {
	for {
		name := filepath.Join(dir, "."+base+".machq-"+strconv.FormatUint(rand.Uint64(), 36))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
}

// commit completes the output: renames the temporary file into place, or
// closes the FIFO or device, reporting a failed write.
func (o *output) commit() error {
	o.done = true
	switch {
	case o.tmp != nil:
		// The message is taken: if it cannot be put in place, keep what
		// was written and say where, rather than lose it.
		if err := o.tmp.Close(); err != nil {
			return fmt.Errorf("write --out %s: %w; what was written is in %s", o.target, err, o.tmp.Name())
		}
		if err := os.Rename(o.tmp.Name(), o.target); err != nil {
			return fmt.Errorf("write --out %s: %w; the message is in %s", o.target, err, o.tmp.Name())
		}
	case o.f != nil:
		if err := o.f.Close(); err != nil {
			return fmt.Errorf("write --out %s: %w", o.f.Name(), err)
		}
	}
	return nil
}

// commitDurable is commit that first syncs a regular file to disk, and
// its directory after the rename, so that what is acknowledged next
// survives a crash. A FIFO, device or stdout has nothing to sync.
// On failure nothing is left behind: the message stays in its queue.
func (o *output) commitDurable() error {
	if o.tmp == nil {
		return o.commit()
	}
	o.done = true
	err := o.tmp.Sync()
	if cerr := o.tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(o.tmp.Name(), o.target)
	}
	if err != nil {
		os.Remove(o.tmp.Name())
		return fmt.Errorf("write --out %s: %w", o.target, err)
	}
	if d, err := os.Open(filepath.Dir(o.target)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// abort removes the temporary file unless commit ran.
func (o *output) abort() {
	if o.done {
		return
	}
	o.done = true
	if o.tmp != nil {
		o.tmp.Close()
		os.Remove(o.tmp.Name())
	}
	if o.f != nil {
		o.f.Close()
	}
}

// progress shows the writing of size bytes to a regular --out file on
// stderr, when that is a terminal (see showProgress), until the function
// it returns is called. Nothing is shown for stdout, a FIFO or a device.
func (o *output) progress(stderr io.Writer, size int64) func(ok bool) {
	if o.tmp == nil {
		return func(bool) {}
	}
	f := o.tmp
	return showProgress(stderr, "writing "+o.target, size, func() int64 {
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0
		}
		return off
	})
}
