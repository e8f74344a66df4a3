package main

import (
	"bytes"
	"testing"
)

// runCLI runs embassyctl with args and returns its exit code, stdout and
// stderr, as a shell would see them.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}
