package verifier

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// The verifier's SQL is written once, in the dialect SQLite and
// PostgreSQL share (`?` placeholders, INSERT ... ON CONFLICT, upserts
// with excluded.*). What differs is kept here: PostgreSQL numbers its
// placeholders ($1, $2, ...), and the migrations use SQLite's type names
// and trigger syntax.

// isPostgres reports whether dsn names a PostgreSQL database rather than
// an SQLite file.
func isPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// writeLockSQL serialises write transactions across every verifier
// process sharing one PostgreSQL database, as SQLite's write lock does
// for processes sharing a file: the audit chain's read-the-head-then-
// append, the nonce burn and every check-then-insert stay linear. The
// lock is released at commit or rollback; its key is scoped to the
// database, so other databases on the cluster do not contend.
const writeLockSQL = `SELECT pg_advisory_xact_lock(7100339453712098103)` // an arbitrary key, the verifier's

// openPostgres opens the PostgreSQL database dsn. synchronousCommit is
// the session's synchronous_commit: "off" keeps commits ordered and
// atomic but may lose the newest ones if the database host loses power
// (SQLite's synchronous=NORMAL); "on" makes every commit durable before
// it returns.
func openPostgres(dsn, synchronousCommit string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("verifier: open PostgreSQL: %w", err)
	}
	cfg.RuntimeParams["synchronous_commit"] = synchronousCommit
	cfg.RuntimeParams["application_name"] = "embassy-verifier"
	return sql.OpenDB(pgConnector{stdlib.GetConnector(*cfg)}), nil
}

// pgConnector makes connections that accept `?` placeholders.
type pgConnector struct{ driver.Connector }

func (c pgConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return pgConn{conn.(*stdlib.Conn)}, nil
}

// pgConn is a pgx connection that rewrites `?` placeholders to $n before
// preparing or running a statement; its other methods are pgx's.
type pgConn struct{ *stdlib.Conn }

func (c pgConn) Prepare(q string) (driver.Stmt, error) { return c.Conn.Prepare(rebind(q)) }

func (c pgConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	return c.Conn.PrepareContext(ctx, rebind(q))
}

func (c pgConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	return c.Conn.ExecContext(ctx, rebind(q), args)
}

func (c pgConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	return c.Conn.QueryContext(ctx, rebind(q), args)
}

// rebind numbers q's `?` placeholders $1, $2, ... in order, leaving
// those inside quoted literals and identifiers alone.
func rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	var quote byte // the open quote character, or 0
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

var (
	reBlob    = regexp.MustCompile(`\bBLOB\b`)
	reInteger = regexp.MustCompile(`\bINTEGER\b`)
	// reTrigger matches SQLite's "refuse this statement" trigger.
	reTrigger = regexp.MustCompile(`CREATE TRIGGER (\w+) BEFORE (UPDATE|DELETE) ON (\w+)\s+BEGIN SELECT RAISE\(ABORT, '([^']*)'\); END;`)
)

// postgresSchema translates a migration written for SQLite: BLOB is
// BYTEA; INTEGER is BIGINT (SQLite's integers are 64-bit, the columns
// hold unix nanoseconds); a trigger that aborts the statement becomes a
// PL/pgSQL trigger function raising the same message.
func postgresSchema(m string) string {
	m = reBlob.ReplaceAllString(m, "BYTEA")
	m = reInteger.ReplaceAllString(m, "BIGINT")
	return reTrigger.ReplaceAllStringFunc(m, func(s string) string {
		g := reTrigger.FindStringSubmatch(s)
		name, event, table, msg := g[1], g[2], g[3], g[4]
		return fmt.Sprintf(`CREATE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN RAISE EXCEPTION '%[4]s'; END $fn$;
CREATE TRIGGER %[1]s BEFORE %[2]s ON %[3]s FOR EACH ROW EXECUTE FUNCTION %[1]s();`, name, event, table, msg)
	})
}
