package page_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/machq/machq/internal/page"
	"golang.org/x/sys/unix"
)

// sinkByte keeps what the benchmarks read alive.
var sinkByte byte

// sizeName names a byte count the way the benchmarks are labelled.
func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// BenchmarkCreateSeal is the life of a small page: memfd_create, write
// 64 bytes, seal, close.
func BenchmarkCreateSeal(b *testing.B) {
	data := pattern(64, 1)
	b.ReportAllocs()
	for b.Loop() {
		fd, err := page.Create("machq-bench")
		if err != nil {
			b.Fatal(err)
		}
		if err := page.Write(fd, data); err != nil {
			b.Fatal(err)
		}
		if err := page.Seal(fd); err != nil {
			b.Fatal(err)
		}
		if err := unix.Close(fd); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheck is what a server does to every page it receives.
func BenchmarkCheck(b *testing.B) {
	const size = 64 << 10
	fd := newPage(b, pattern(size, 1))
	b.ReportAllocs()
	for b.Loop() {
		if err := page.Check(fd, size); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMapReadOnly maps a sealed page and unmaps it again, lazily or
// with MAP_POPULATE. The +touch variants also read one byte of every
// memory page in between, as a consumer of the payload would, and report
// that as throughput: that is where populating pays off.
func BenchmarkMapReadOnly(b *testing.B) {
	pg := os.Getpagesize()
	for _, size := range []int{64 << 10, 16 << 20} {
		fd := newPage(b, pattern(size, 2))
		for _, populate := range []bool{false, true} {
			for _, touch := range []bool{false, true} {
				name := sizeName(size) + "/lazy"
				if populate {
					name = sizeName(size) + "/populate"
				}
				if touch {
					name += "+touch"
				}
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					if touch {
						b.SetBytes(int64(size))
					}
					var sum byte
					for b.Loop() {
						m, err := page.MapReadOnly(fd, int64(size), populate)
						if err != nil {
							b.Fatal(err)
						}
						if touch {
							for i := 0; i < len(m); i += pg {
								sum += m[i]
							}
						}
						if err := page.Unmap(m); err != nil {
							b.Fatal(err)
						}
					}
					sinkByte = sum
				})
			}
		}
	}
}

// BenchmarkWrite fills a page with pwrite(2). "reuse" overwrites one
// memfd whose memory is already allocated; "fresh" is what a sender pays
// per message: create a memfd, fill it, close it.
func BenchmarkWrite(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 16 << 20} {
		data := pattern(size, 3)
		b.Run(sizeName(size)+"/reuse", func(b *testing.B) {
			fd := newMemfd(b)
			if err := page.Write(fd, data); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				if err := page.Write(fd, data); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(sizeName(size)+"/fresh", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				fd, err := page.Create("machq-bench")
				if err != nil {
					b.Fatal(err)
				}
				if err := page.Write(fd, data); err != nil {
					b.Fatal(err)
				}
				if err := unix.Close(fd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
