package main

import (
	"bytes"
	"strings"
	"testing"
)

// sample is synthetic `go test -bench` output: three rounds of
// plain/gcm/store/store-pread for "seqread1M conc=1", two rounds of
// plain/store (one with a gcm) for "randread4K conc=4", a workload of
// another benchmark function, and noise the parser must skip.
const sample = `goos: linux
goarch: amd64
pkg: github.com/dataembassy/embassy/storage
BenchmarkStore/seqread1M/conc=1/plain-2         	     100	  1000 ns/op	1000.00 MB/s
BenchmarkStore/seqread1M/conc=1/gcm-2           	     100	  1000 ns/op	3000.00 MB/s
BenchmarkStore/seqread1M/conc=1/store-2         	     100	  1000 ns/op	 500.00 MB/s
BenchmarkStore/seqread1M/conc=1/store-pread-2   	     100	  1000 ns/op	 400.00 MB/s
BenchmarkStore/randread4K/conc=4/plain-2        	     100	  1000 ns/op	 100.00 MB/s
BenchmarkStore/randread4K/conc=4/gcm-2          	     100	  1000 ns/op	 200.00 MB/s
BenchmarkStore/randread4K/conc=4/store-2        	     100	  1000 ns/op	  50.00 MB/s
BenchmarkStore/seqread1M/conc=1/plain#01-2      	     100	  1000 ns/op	2000.00 MB/s
BenchmarkStore/seqread1M/conc=1/gcm#01-2        	     100	  1000 ns/op	4000.00 MB/s
BenchmarkStore/seqread1M/conc=1/store#01-2      	     100	  1000 ns/op	 600.00 MB/s
BenchmarkStore/seqread1M/conc=1/store-pread#01-2	     100	  1000 ns/op	1000.00 MB/s
BenchmarkStore/randread4K/conc=4/plain#01-2     	     100	  1000 ns/op	 200.00 MB/s
BenchmarkStore/randread4K/conc=4/store#01-2     	     100	  1000 ns/op	 150.00 MB/s
BenchmarkStore/seqread1M/conc=1/plain#02-2      	     100	  1000 ns/op	 800.00 MB/s
BenchmarkStore/seqread1M/conc=1/gcm#02-2        	     100	  1000 ns/op	2000.00 MB/s
BenchmarkStore/seqread1M/conc=1/store#02-2      	     100	  1000 ns/op	 800.00 MB/s
BenchmarkStore/seqread1M/conc=1/store-pread#02-2	     100	  1000 ns/op	 200.00 MB/s
BenchmarkStoreFlush/randwrite4K-flush64/plain   	     100	  1000 ns/op	  40.00 MB/s
BenchmarkStoreFlush/randwrite4K-flush64/store   	     100	  1000 ns/op	  10.00 MB/s
BenchmarkStore/orphan/store-2                   	     100	  1000 ns/op	  99.00 MB/s
BenchmarkOther/seqread1M/conc=1/plain-2         	     100	  1000 ns/op	   1.00 MB/s
BenchmarkStore/seqread1M/conc=1/plain-2 no throughput
PASS
`

func TestParse(t *testing.T) {
	rows, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	// Medians by hand:
	// seqread1M conc=1: plain 1000 2000 800 -> 1000; gcm 3000 4000 2000 ->
	//   3000; store 500 600 800 -> 600; store/plain .5 .3 1 -> .5;
	//   store/gcm 1/6 .15 .4 -> 1/6; pread/plain .4 .5 .25 -> .4.
	// randread4K conc=4: plain 100 200 -> 150; gcm 200 and 0 (round two
	//   had none) -> 100; store 50 150 -> 100; store/plain .5 .75 -> .625;
	//   store/gcm .25 and 0 -> .125; no pread.
	// randwrite4K-flush64: one round 40/10.
	// orphan: a store with no plain before it counts for nothing.
	want := []Row{
		{Workload: "seqread1M conc=1", Plain: 1000, GCM: 3000, Store: 600, StorePlain: 0.5, StoreGCM: 500.0 / 3000, PreadPlain: 0.4, HasGCM: true, HasPread: true, Runs: 3},
		{Workload: "randread4K conc=4", Plain: 150, GCM: 100, Store: 100, StorePlain: 0.625, StoreGCM: 0.125, HasGCM: true, Runs: 2},
		{Workload: "randwrite4K-flush64", Plain: 40, Store: 10, StorePlain: 0.25, Runs: 1},
		{Workload: "orphan"},
	}
	if len(rows) != len(want) {
		t.Fatalf("got %d rows %+v, want %d", len(rows), rows, len(want))
	}
	for i := range want {
		if !close(rows[i], want[i]) {
			t.Errorf("row %d:\n got %+v\nwant %+v", i, rows[i], want[i])
		}
	}
}

func close(a, b Row) bool {
	near := func(x, y float64) bool { d := x - y; return d < 1e-9 && d > -1e-9 }
	return a.Workload == b.Workload && a.HasGCM == b.HasGCM && a.HasPread == b.HasPread && a.Runs == b.Runs &&
		near(a.Plain, b.Plain) && near(a.GCM, b.GCM) && near(a.Store, b.Store) &&
		near(a.StorePlain, b.StorePlain) && near(a.StoreGCM, b.StoreGCM) && near(a.PreadPlain, b.PreadPlain)
}

func TestParseNames(t *testing.T) {
	for _, tc := range []struct {
		line, workload string
		runs           int
	}{
		{"BenchmarkStore/a/b/c/store-8 1 1 ns/op 2 MB/s", "a b c", 1},
		{"BenchmarkStore/a/store#03 1 1 ns/op 2 MB/s", "a", 1},    // GOMAXPROCS=1: no -P suffix
		{"BenchmarkStore/store-4 1 1 ns/op 2 MB/s", "store-4", 0}, // no workload: the name is the key, target "store" without a plain
	} {
		in := strings.Replace(tc.line, "store", "plain", 1) + "\n" + tc.line + "\n"
		if tc.runs == 0 {
			in = tc.line + "\n"
		}
		rows, err := Parse(strings.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || rows[0].Workload != tc.workload || rows[0].Runs != tc.runs {
			t.Errorf("%q: got %+v, want workload %q with %d runs", tc.line, rows, tc.workload, tc.runs)
		}
	}
}

func TestParseBadThroughput(t *testing.T) {
	if _, err := Parse(strings.NewReader("BenchmarkStore/a/plain 1 1 ns/op x MB/s\n")); err == nil {
		t.Fatal("a throughput that is no number was accepted")
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1}, 2}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestWrite(t *testing.T) {
	rows, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Write(&b, rows); err != nil {
		t.Fatal(err)
	}
	want := `
workload                      plain MB/s    gcm MB/s  store MB/s store/plain   store/gcm pread/plain  runs
seqread1M conc=1                  1000.0      3000.0       600.0        0.50        0.17        0.40     3
randread4K conc=4                  150.0       100.0       100.0        0.62        0.12           -     2
randwrite4K-flush64                 40.0           -        10.0        0.25           -           -     1
orphan                               0.0           -         0.0        0.00           -           -     0
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}
