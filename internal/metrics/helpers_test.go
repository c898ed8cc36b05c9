package metrics_test

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"testing"
)

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
