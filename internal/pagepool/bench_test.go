package pagepool

import (
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
)

// BenchmarkMapWritable compares ways of getting an 8 MiB memfd mapped for
// writing with every page allocated and mapped, then filled, unmapped and
// closed: what NewPage (MapPopulated) does against MAP_POPULATE, and with
// the memory allocated first by fallocate.
func BenchmarkMapWritable(b *testing.B) {
	const size = 8 << 20
	for _, v := range []struct {
		name string
		get  func(fd int) ([]byte, error)
	}{
		{"truncate+MAP_POPULATE", func(fd int) ([]byte, error) {
			if err := page.Truncate(fd, size); err != nil {
				return nil, err
			}
			return page.MapWritable(fd, size, true)
		}},
		{"truncate+MADV_POPULATE_WRITE", func(fd int) ([]byte, error) {
			if err := page.Truncate(fd, size); err != nil {
				return nil, err
			}
			return MapPopulated(fd, size)
		}},
		{"fallocate+MAP_POPULATE", func(fd int) ([]byte, error) {
			if err := unix.Fallocate(fd, 0, 0, size); err != nil {
				return nil, err
			}
			return page.MapWritable(fd, size, true)
		}},
		{"fallocate+MADV_POPULATE_WRITE", func(fd int) ([]byte, error) {
			if err := unix.Fallocate(fd, 0, 0, size); err != nil {
				return nil, err
			}
			return MapPopulated(fd, size)
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				fd, err := page.Create("bench")
				if err != nil {
					b.Fatal(err)
				}
				buf, err := v.get(fd)
				if err != nil {
					b.Fatal(err)
				}
				for i := 0; i < len(buf); i += 4096 {
					buf[i] = 1
				}
				page.Unmap(buf)
				syscall.Close(fd)
			}
		})
	}
}
