package main

import (
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// A plot is one SVG chart: points (x, y) drawn as dots, optionally joined,
// with horizontal reference lines (a target, a percentile).
type plot struct {
	title, xLabel, yLabel string
	points                [][2]float64
	joined                bool
	lines                 []refLine
}

type refLine struct {
	label    string
	v        float64 // y, or x when vertical
	vertical bool
}

// Chart geometry, in SVG user units.
const (
	plotW, plotH                       = 720, 420
	marginL, marginR, marginT, marginB = 70, 20, 40, 50
)

// svg renders the plot.
func (p plot) svg() string {
	xmax, ymax := 0.0, 0.0
	for _, pt := range p.points {
		xmax, ymax = math.Max(xmax, pt[0]), math.Max(ymax, pt[1])
	}
	for _, l := range p.lines {
		if l.vertical {
			xmax = math.Max(xmax, l.v)
		} else {
			ymax = math.Max(ymax, l.v)
		}
	}
	xmax, ymax = niceCeil(xmax), niceCeil(ymax)
	iw, ih := float64(plotW-marginL-marginR), float64(plotH-marginT-marginB)
	X := func(x float64) float64 { return marginL + x/xmax*iw }
	Y := func(y float64) float64 { return marginT + ih - y/ymax*ih }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">%s</text>`+"\n", marginL, html.EscapeString(p.title))
	for i := 0; i <= 5; i++ { // grid and tick labels
		x, y := xmax*float64(i)/5, ymax*float64(i)/5
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", X(x), marginT, X(x), plotH-marginB)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", X(x), plotH-marginB+16, tick(x))
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", marginL, Y(y), plotW-marginR, Y(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginL-6, Y(y)+4, tick(y))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", X(xmax/2), plotH-10, html.EscapeString(p.xLabel))
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>`+"\n",
		Y(ymax/2), Y(ymax/2), html.EscapeString(p.yLabel))
	for _, l := range p.lines {
		if l.vertical {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c33" stroke-dasharray="6 4"/>`+"\n", X(l.v), marginT, X(l.v), plotH-marginB)
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="end" fill="#c33">%s</text>`+"\n", X(l.v)-4, marginT+14, html.EscapeString(l.label))
			continue
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#c33" stroke-dasharray="6 4"/>`+"\n", marginL, Y(l.v), plotW-marginR, Y(l.v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#c33">%s</text>`+"\n", plotW-marginR-4, Y(l.v)-4, html.EscapeString(l.label))
	}
	if p.joined && len(p.points) > 1 {
		b.WriteString(`<polyline fill="none" stroke="#36c" stroke-width="1.5" points="`)
		for _, pt := range p.points {
			fmt.Fprintf(&b, "%.1f,%.1f ", X(pt[0]), Y(pt[1]))
		}
		b.WriteString("\"/>\n")
	}
	for _, pt := range p.points {
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="#36c"/>`+"\n", X(pt[0]), Y(pt[1]))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to a round multiple of a power of ten (1 for v <= 0).
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func tick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

// distributionPlot is the cumulative distribution of measured times: each
// trial a dot at (time, fraction of trials at most that long), with the
// target as a line.
func distributionPlot(title string, took []time.Duration, target time.Duration) plot {
	s := slices.Clone(took)
	slices.Sort(s)
	p := plot{title: title, xLabel: "milliseconds", yLabel: "fraction of trials at most that long", joined: true}
	for i, d := range s {
		p.points = append(p.points, [2]float64{ms(d), float64(i+1) / float64(len(s))})
	}
	if target > 0 {
		p.lines = append(p.lines, refLine{label: fmt.Sprintf("target p99 < %v", target), v: ms(target), vertical: true})
	}
	return p
}

// plot writes p as NAME.svg in the -plot directory, if one was given, and
// says so.
func (rep *reporter) plot(name string, p plot) error {
	dir := rep.plotDir
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("-plot %s: %w", dir, err)
	}
	path := filepath.Join(dir, name+".svg")
	if err := os.WriteFile(path, []byte(p.svg()), 0o644); err != nil {
		return fmt.Errorf("-plot: %w", err)
	}
	rep.event("plot", field{"file", path})
	return nil
}
