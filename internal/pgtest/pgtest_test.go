package pgtest_test

import (
	"context"
	"os"
	"testing"

	"github.com/dataembassy/embassy/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// Each test's database is its own: a table made in one is absent from the
// other.
func TestNewDatabaseIsolated(t *testing.T) {
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases share the URL %s", a)
	}
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(t.Context(), `CREATE TABLE t (x int)`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := ca.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE tablename = 't'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("table in its own database: %d, %v", n, err)
	}
	if err := cb.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE tablename = 't'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("table seen from the other database: %d, %v", n, err)
	}
	var v string
	if err := ca.QueryRow(t.Context(), `SHOW server_version_num`).Scan(&v); err != nil || v < "150000" {
		t.Fatalf("server version %s, %v; want PostgreSQL 15 or newer", v, err)
	}
}
