package verifier_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testDSN returns a new, empty verifier database for t on the backend
// EMBASSY_TEST_DB selects (see newDSN).
func testDSN(t testing.TB) string {
	t.Helper()
	return newDSN(t, "EMBASSY_TEST_DB")
}

// newDSN returns a new, empty verifier database for t on the backend the
// environment variable env names: "sqlite" (the default), a file in t's
// temporary directory, or "postgres", a database of its own on the test
// binary's throwaway PostgreSQL cluster.
func newDSN(t testing.TB, env string) string {
	t.Helper()
	switch b := backend(env); b {
	case "sqlite":
		return filepath.Join(t.TempDir(), "verifier.db")
	case "postgres":
		return pgtest.NewDatabase(t)
	default:
		t.Fatalf("%s=%q: want sqlite or postgres", env, b)
		return ""
	}
}

// backend is the backend env names, "sqlite" when unset.
func backend(env string) string {
	if b := os.Getenv(env); b != "" {
		return b
	}
	return "sqlite"
}
