package verifier_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if binPath != "" { // built by verifierBinary
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

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

// openDB opens dsn, closing it when the test ends.
func openDB(t *testing.T, dsn string) *verifier.DB {
	t.Helper()
	db, err := verifier.OpenDB(t.Context(), dsn)
	if err != nil {
		t.Fatalf("open %s: %v", dsn, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestConcurrentOperatorWrites races the same operator write through two
// handles on one database: exactly one succeeds and the other gets the
// same sentinel error on either backend.
func TestConcurrentOperatorWrites(t *testing.T) {
	dsn := testDSN(t)
	dbs := [2]*verifier.DB{openDB(t, dsn), openDB(t, dsn)} // two connection pools, as two processes have
	ctx := t.Context()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	race := func(name string, want error, op func(*verifier.DB) error) {
		t.Helper()
		var errs [2]error
		var wg sync.WaitGroup
		for i, db := range dbs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = op(db) }()
		}
		wg.Wait()
		if ok := (errs[0] == nil) != (errs[1] == nil); !ok || !errors.Is(errors.Join(errs[:]...), want) {
			t.Errorf("%s twice at once: %v, %v; want one success and one %v", name, errs[0], errs[1], want)
		}
	}
	race("enroll", verifier.ErrExists, func(db *verifier.DB) error {
		return db.Enroll(ctx, verifier.EnrollParams{ID: "rack1", EKPublic: &k.PublicKey, Actor: "test"})
	})
	race("revoke", verifier.ErrExists, func(db *verifier.DB) error { return db.Revoke(ctx, "rack1", "lost", "test") })
	rep, err := dbs[0].VerifyAudit(ctx, 0, "")
	if err != nil || len(rep.Problems) != 0 || rep.Records != 2 {
		t.Fatalf("audit: %v %+v, want 2 records, intact", err, rep)
	}
}
