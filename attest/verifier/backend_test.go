package verifier_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testDSN returns a new, empty verifier database for t on the backend
// EMBASSY_TEST_DB selects: "sqlite" (the default), a file in t's temporary
// directory, or "postgres", a database of its own on the test binary's
// throwaway PostgreSQL cluster.
func testDSN(t testing.TB) string {
	t.Helper()
	switch b := os.Getenv("EMBASSY_TEST_DB"); b {
	case "", "sqlite":
		return filepath.Join(t.TempDir(), "verifier.db")
	case "postgres":
		return pgtest.NewDatabase(t)
	default:
		t.Fatalf("EMBASSY_TEST_DB=%q: want sqlite or postgres", b)
		return ""
	}
}
