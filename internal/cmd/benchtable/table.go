package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Row is one workload's line of the table: medians over the rounds that
// had a store result (Runs of them).
type Row struct {
	// Workload is the benchmark name without its function and target, its
	// path elements joined by spaces ("seqread1M conc=4").
	Workload string
	// Plain, GCM and Store are the median throughputs in MB/s.
	Plain, GCM, Store float64
	// StorePlain, StoreGCM and PreadPlain are the medians of the per-round
	// ratios store/plain, store/gcm and store-pread/plain.
	StorePlain, StoreGCM, PreadPlain float64
	// HasGCM and HasPread say whether GCM/StoreGCM and PreadPlain have
	// values (the table shows "-" otherwise).
	HasGCM, HasPread bool
	// Runs counts the store results (rounds).
	Runs int
}

// workload gathers one workload's results while the lines are read.
type workload struct {
	last                float64 // the latest plain MB/s
	hasLast             bool
	gcm                 float64 // the latest gcm MB/s since that plain
	hasGCM              bool
	anyGCM              bool // some store result had a gcm in its round
	plain, store, ratio []float64
	// gcmVals and gcmRatio are per store result, 0 for a round without a
	// gcm result (as the awk program this replaces counted them).
	gcmVals, gcmRatio []float64
	pread             []float64
}

var (
	procSuffix = regexp.MustCompile(`-[0-9]+$`) // GOMAXPROCS
	dupSuffix  = regexp.MustCompile(`#[0-9]+$`) // a repeated sub-benchmark name
)

// Parse reads `go test -bench` output and returns one row per workload in
// the order the workloads first appear. It reads only lines starting with
// "BenchmarkStore" that report MB/s. A name's last path element is the
// target (plain, gcm, store or store-pread, with go test's "#NN" and "-P"
// suffixes dropped); the elements between the function name and the
// target name the workload (the function name itself is not part of it).
//
// Rounds are grouped by order, not by suffix: a plain result starts a
// round (and forgets the previous gcm); gcm records the ceiling for the
// round; each store and store-pread result is divided by the latest plain
// (store also by the round's gcm, if any). Results before any plain of
// their workload are ignored, as are other targets (though their workload
// still gets a row).
func Parse(r io.Reader) ([]Row, error) {
	var order []string
	seen := map[string]*workload{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "BenchmarkStore") || !strings.Contains(line, "MB/s") {
			continue
		}
		f := strings.Fields(line)
		mb := -1
		for i, s := range f {
			if s == "MB/s" {
				mb = i
			}
		}
		if mb < 1 {
			continue // "MB/s" only inside a field: not a throughput
		}
		v, err := strconv.ParseFloat(f[mb-1], 64)
		if err != nil {
			return nil, fmt.Errorf("throughput in %q: %w", line, err)
		}
		p := strings.Split(f[0], "/")
		target := dupSuffix.ReplaceAllString(procSuffix.ReplaceAllString(p[len(p)-1], ""), "")
		key := ""
		switch {
		case len(p) == 2:
			key = p[1]
		case len(p) > 2:
			key = strings.Join(p[1:len(p)-1], " ")
		}
		w := seen[key]
		if w == nil {
			w = &workload{}
			seen[key] = w
			order = append(order, key)
		}
		w.add(target, v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the benchmark output: %w", err)
	}
	rows := make([]Row, 0, len(order))
	for _, k := range order {
		rows = append(rows, seen[k].row(k))
	}
	return rows, nil
}

// add records one result of target at v MB/s.
func (w *workload) add(target string, v float64) {
	switch {
	case target == "plain":
		w.last, w.hasLast, w.hasGCM = v, true, false
	case target == "gcm":
		w.gcm, w.hasGCM = v, true
	case target == "store-pread" && w.hasLast:
		w.pread = append(w.pread, v/w.last)
	case target == "store" && w.hasLast:
		w.ratio = append(w.ratio, v/w.last)
		w.plain = append(w.plain, w.last)
		w.store = append(w.store, v)
		g, rg := 0.0, 0.0
		if w.hasGCM {
			w.anyGCM = true
			g, rg = w.gcm, v/w.gcm
		}
		w.gcmVals = append(w.gcmVals, g)
		w.gcmRatio = append(w.gcmRatio, rg)
	}
}

func (w *workload) row(key string) Row {
	return Row{
		Workload: key,
		Plain:    median(w.plain), GCM: median(w.gcmVals), Store: median(w.store),
		StorePlain: median(w.ratio), StoreGCM: median(w.gcmRatio), PreadPlain: median(w.pread),
		HasGCM: w.anyGCM, HasPread: len(w.pread) > 0, Runs: len(w.store),
	}
}

// median is the middle value, or the mean of the two middle ones; 0 for
// no values.
func median(a []float64) float64 {
	n := len(a)
	if n == 0 {
		return 0
	}
	s := append([]float64(nil), a...)
	sort.Float64s(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Write prints the table: a blank line, the header, one line per row.
func Write(w io.Writer, rows []Row) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "\n%-28s %11s %11s %11s %11s %11s %11s %5s\n",
		"workload", "plain MB/s", "gcm MB/s", "store MB/s", "store/plain", "store/gcm", "pread/plain", "runs")
	for _, r := range rows {
		g1, g2, p1 := fmt.Sprintf("%11s", "-"), fmt.Sprintf("%11s", "-"), fmt.Sprintf("%11s", "-")
		if r.HasGCM {
			g1, g2 = fmt.Sprintf("%11.1f", r.GCM), fmt.Sprintf("%11.2f", r.StoreGCM)
		}
		if r.HasPread {
			p1 = fmt.Sprintf("%11.2f", r.PreadPlain)
		}
		fmt.Fprintf(bw, "%-28s %11.1f %s %11.1f %11.2f %s %s %5d\n",
			r.Workload, r.Plain, g1, r.Store, r.StorePlain, g2, p1, r.Runs)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing the table: %w", err)
	}
	return nil
}
