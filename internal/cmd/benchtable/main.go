// Command benchtable prints the table `make bench-store` ends with: for each
// storage benchmark workload, the medians of the per-round throughputs and
// ratios of the store against plain os.File I/O, the pure AES-GCM ceiling
// and (optionally) the store reading with pread.
//
// Usage:
//
//	benchtable [FILE]
//
// FILE holds the output of `go test -bench BenchmarkStore ./storage/`
// (standard input when FILE is absent). How the rounds are grouped is
// described on Parse.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	in := stdin
	switch len(args) {
	case 0:
	case 1:
		f, err := os.Open(args[0])
		if err != nil {
			return fmt.Errorf("opening the benchmark output: %w", err)
		}
		defer f.Close()
		in = f
	default:
		return fmt.Errorf("usage: benchtable [FILE]")
	}
	rows, err := Parse(in)
	if err != nil {
		return err
	}
	return Write(stdout, rows)
}
