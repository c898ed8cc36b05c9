package bench

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlot draws the median round trip against payload size, on log-log
// axes, for every system and view in r, and saves it to path; the format
// follows the extension (.png, .svg or .pdf). Sizes of 0 bytes cannot sit
// on a logarithmic axis and are left out.
func (r *Report) WritePlot(path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("machq store + retrieve round trip (%d CPUs, Linux %s)", r.Machine.CPUs, r.Machine.Kernel)
	p.X.Label.Text = "payload size (bytes)"
	p.Y.Label.Text = "median round trip (seconds)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker = sizeTicks{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())

	type series struct {
		name string
		xys  plotter.XYs
	}
	var all []*series
	find := func(name string) *series {
		for _, s := range all {
			if s.name == name {
				return s
			}
		}
		s := &series{name: name}
		all = append(all, s)
		return s
	}
	for _, l := range r.Latency {
		if l.Skipped != "" || l.Size == 0 || l.Median <= 0 {
			continue
		}
		name := l.System
		if l.View == ZeroCopy {
			name += " (zero-copy)"
		}
		s := find(name)
		s.xys = append(s.xys, plotter.XY{X: float64(l.Size), Y: float64(l.Median) / 1e9})
	}
	all = slices.DeleteFunc(all, func(s *series) bool { return len(s.xys) == 0 })
	if len(all) == 0 {
		return fmt.Errorf("bench: nothing to plot: no latency above 0 bytes was measured")
	}
	for i, s := range all {
		line, points, err := plotter.NewLinePoints(s.xys)
		if err != nil {
			return err
		}
		line.Color = plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i / len(plotutil.DefaultColors))
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		if strings.HasSuffix(s.name, "(zero-copy)") {
			line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(line, points)
		p.Legend.Add(s.name, line, points)
	}
	ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
	switch ext {
	case "png", "svg", "pdf":
	default:
		return fmt.Errorf("bench: plot %s: use a .png, .svg or .pdf file name", path)
	}
	return p.Save(10*vg.Inch, 7*vg.Inch, path)
}

// sizeTicks marks powers of 4 on the size axis with binary units.
type sizeTicks struct{}

// Ticks returns a labelled tick at each power of 4 between lo and hi.
func (sizeTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for e := 0; e <= 62; e += 2 {
		v := math.Ldexp(1, e)
		if v < lo/1.01 || v > hi*1.01 {
			continue
		}
		ticks = append(ticks, plot.Tick{Value: v, Label: fmtSize(int(v))})
	}
	return ticks
}
