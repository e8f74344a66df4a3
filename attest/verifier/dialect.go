package verifier

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
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

// IsPostgresDSN reports whether dsn, as OpenDB takes it, names a
// PostgreSQL database (a postgres:// or postgresql:// URL) rather than an
// SQLite file.
func IsPostgresDSN(dsn string) bool {
	l := strings.ToLower(dsn)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

// RedactDSN is dsn as logs and messages may show it: a PostgreSQL URL
// without its password (in the user info or as a password parameter); a
// SQLite path as it is.
func RedactDSN(dsn string) string {
	if !IsPostgresDSN(dsn) {
		return dsn
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// beginSQL begins a PostgreSQL transaction holding the verifier's write
// lock, in one round trip. Every transaction the verifier opens writes, so
// each takes the lock (as SQLite's immediate transactions take its write
// lock): write transactions run one at a time across every verifier
// process sharing the database, and the audit chain's read-the-head-then-
// append, the nonce burn and every check-then-insert stay linear. The
// advisory lock (its key arbitrary, the verifier's) is released at commit
// or rollback; it is scoped to the database, so other databases on the
// cluster do not contend.
const beginSQL = `BEGIN; SELECT pg_advisory_xact_lock(7100339453712098103)`

// openPostgres opens the PostgreSQL database dsn. synchronousCommit is
// the session's synchronous_commit: "off" keeps commits ordered and
// atomic but may lose the newest ones (a fraction of a second's) if the
// PostgreSQL server crashes or its host loses power, a little weaker than
// SQLite's synchronous=NORMAL, which only a power loss can undo; "on"
// makes every commit durable before it returns. A lost attestation
// decision costs the appliance a retry; operators' writes (the admin API,
// recovery mode) use "on".
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

// BeginTx begins a transaction holding the write lock (beginSQL).
func (c pgConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if opts.Isolation != driver.IsolationLevel(sql.LevelDefault) || opts.ReadOnly {
		return nil, errors.New("verifier: PostgreSQL transactions take the default options only")
	}
	if c.Conn.Conn().IsClosed() {
		return nil, driver.ErrBadConn
	}
	tx, err := c.Conn.Conn().BeginTx(ctx, pgx.TxOptions{BeginQuery: beginSQL})
	if err != nil {
		return nil, err
	}
	return pgTx{ctx, tx}, nil
}

// pgTx is a pgx transaction as database/sql drives it.
type pgTx struct {
	ctx context.Context
	tx  pgx.Tx
}

func (t pgTx) Commit() error   { return t.tx.Commit(t.ctx) }
func (t pgTx) Rollback() error { return t.tx.Rollback(t.ctx) }

func (c pgConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	return c.Conn.ExecContext(ctx, rebind(q), args)
}

func (c pgConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	return c.Conn.QueryContext(ctx, rebind(q), args)
}

// rebind numbers q's `?` placeholders $1, $2, ... in order, leaving
// those inside quoted literals and identifiers and comments alone. The
// verifier's SQL has no E-prefixed strings and no dollar quotes around a `?`
// (TestRebind holds the cases).
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
		case strings.HasPrefix(q[i:], "--"):
			end := strings.IndexByte(q[i:], '\n')
			if end < 0 {
				end = len(q) - i
			}
			b.WriteString(q[i : i+end])
			i += end - 1
			continue
		case strings.HasPrefix(q[i:], "/*"):
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				end = len(q) - i
			} else {
				end += 4
			}
			b.WriteString(q[i : i+end])
			i += end - 1
			continue
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
