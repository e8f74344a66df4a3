// Package testenv holds helpers shared by Embassy's tests: finding the real
// external tools (qemu, swtpm, nbd clients) a test needs, and writing the
// small initramfs archives guest tests boot.
//
// A missing tool fails the test rather than skipping it: `make test` installs
// every tool, so a missing one is a broken environment, never a pass.
package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Tool returns the absolute path of the named program, failing the test if it
// is not installed. Debian's tools are looked up with /usr/bin and /usr/sbin
// first on PATH, so a python3 from elsewhere does not shadow the one nbdsh
// needs.
func Tool(t testing.TB, name string) string {
	t.Helper()
	path, err := lookSystemPath(name)
	if err != nil {
		t.Fatalf("%s is required but not installed (run scripts/install-deps.sh): %v", name, err)
	}
	return path
}

// SystemPathEnv returns the environment with /usr/bin and /usr/sbin placed
// first on PATH, for running Debian's tools (nbdsh runs `python3 -m nbd`).
func SystemPathEnv() []string {
	env := os.Environ()
	for i, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			env[i] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin:" + strings.TrimPrefix(kv, "PATH=")
			return env
		}
	}
	return append(env, "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
}

func lookSystemPath(name string) (string, error) {
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/bin", "/sbin"} {
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return exec.LookPath(name)
}
