// Command makehelp prints `make help`: every target the given make files
// define, with the one-line doc of its "## target: doc" comment, and fails
// naming any target that has no such doc (or a doc naming no target).
//
// Usage:
//
//	makehelp Makefile mk/*.mk
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "makehelp:", err)
		os.Exit(1)
	}
}

func run(files []string, stdout io.Writer) error {
	if len(files) == 0 {
		return fmt.Errorf("usage: makehelp MAKEFILE...")
	}
	targets, err := ParseFiles(files...)
	if err != nil {
		return err
	}
	Write(stdout, targets)
	return Check(targets)
}
