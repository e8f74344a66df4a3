package main

import (
	"bytes"
	"strings"
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

// TestUsageConventions: every command answers --help with its usage on
// stdout and exit 0, and wrong arguments with the usage on stderr and
// exit 2.
func TestUsageConventions(t *testing.T) {
	helps := [][]string{{"--help"}, {"help"}}
	for name := range commands {
		helps = append(helps, []string{name, "--help"})
	}
	helps = append(helps,
		[]string{"store", "show", "--help"}, []string{"serve", "-h"}, []string{"image", "predict", "--help"},
		[]string{"release", "keygen", "--help"}, []string{"ekroot", "list", "--help"})
	for _, args := range helps {
		code, out, errs := runCLI(t, args...)
		if code != 0 || !strings.Contains(out, "usage: embassyctl") || errs != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	for _, args := range [][]string{
		{}, {"nope"}, {"store", "show", "--bogus", "x"}, {"serve", "--bogus"},
		{"release", "keygen"}, {"release", "inspect"}, {"release", "trust", "--db", "x"},
		{"audit", "list", "extra"}, {"revoke", "--db", "x", "--reason", " ", "id"},
	} {
		code, out, errs := runCLI(t, args...)
		if code != 2 || out != "" || !strings.Contains(errs, "usage") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
}
