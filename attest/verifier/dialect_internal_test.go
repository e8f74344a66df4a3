package verifier

import (
	"strings"
	"testing"
)

func TestRebind(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`SELECT 1`, `SELECT 1`},
		{`SELECT a FROM t WHERE x = ? AND y = ?`, `SELECT a FROM t WHERE x = $1 AND y = $2`},
		{`INSERT INTO t VALUES (?,?,?)`, `INSERT INTO t VALUES ($1,$2,$3)`},
		{`SELECT '?' , "a?b", ? FROM t`, `SELECT '?' , "a?b", $1 FROM t`},
		{`SELECT 'it''s?', ?`, `SELECT 'it''s?', $1`},
		{"SELECT a, -- the appliance's row?\n ? FROM t", "SELECT a, -- the appliance's row?\n $1 FROM t"},
		{"SELECT ? -- trailing ?", "SELECT $1 -- trailing ?"},
		{`SELECT /* it's ? */ ?, ?`, `SELECT /* it's ? */ $1, $2`},
		{`SELECT ? /* unclosed ?`, `SELECT $1 /* unclosed ?`},
		{`SELECT 5 - -?`, `SELECT 5 - -$1`},
	} {
		if got := rebind(tc.in); got != tc.want {
			t.Errorf("rebind(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Every migration translates to PostgreSQL without SQLite-only syntax, and
// each SQLite trigger becomes a trigger function and a trigger.
func TestPostgresSchema(t *testing.T) {
	for i, m := range migrations {
		pg := postgresSchema(m)
		for _, bad := range []string{"BLOB", "INTEGER", "RAISE(ABORT"} {
			if strings.Contains(pg, bad) {
				t.Errorf("migration %d still has %s:\n%s", i+1, bad, pg)
			}
		}
		sqliteTriggers := strings.Count(m, "CREATE TRIGGER")
		if n := strings.Count(pg, "CREATE FUNCTION"); n != sqliteTriggers || strings.Count(pg, "CREATE TRIGGER") != sqliteTriggers {
			t.Errorf("migration %d: %d triggers became %d functions:\n%s", i+1, sqliteTriggers, n, pg)
		}
	}
	if !strings.Contains(postgresSchema(migrations[0]), "RAISE EXCEPTION 'audit log is append-only'") {
		t.Error("the audit triggers lost their message")
	}
}
