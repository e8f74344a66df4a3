package verifier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite driver "sqlite"
)

// DB is the verifier's state, in SQLite or in PostgreSQL. The verifier
// service and the operator CLI (embassyctl, on the verifier host) both use
// it; the database's locking lets them run at the same time, and several
// verifier processes may share one PostgreSQL database. Safe for
// concurrent use.
type DB struct {
	db  *sql.DB
	pg  bool // PostgreSQL, not SQLite
	now func() time.Time
	// writeMu serialises this process's write transactions: contending
	// for SQLite's write lock inside the driver means busy-handler sleeps
	// of milliseconds, which wreck tail latency under load.
	writeMu sync.Mutex
	stmts   sync.Map // SQL text -> *sql.Stmt
}

// maxIdleConns is how many database connections stay open between
// requests; on PostgreSQL it also bounds the open ones, each a server
// process.
const maxIdleConns = 32

// OpenDB opens (creating if needed) and migrates the database dsn, for the
// verifier service. dsn is a PostgreSQL URL (postgres://... or
// postgresql://..., see github.com/jackc/pgx/v5's ParseConfig) or else
// the path of an SQLite file. Commits are ordered and crash-safe, but the
// newest ones may be lost if the database host loses power (SQLite: WAL
// with synchronous=NORMAL; PostgreSQL: synchronous_commit=off; see
// docs/performance-verifier.md for why).
func OpenDB(ctx context.Context, dsn string) (*DB, error) {
	if IsPostgresDSN(dsn) {
		return openPostgresDB(ctx, dsn, "off")
	}
	return openDB(ctx, dsn, "NORMAL")
}

// OpenDurableDB is OpenDB for operators' writes (enrollment, revocation,
// release publication): every commit is on disk before it returns
// (SQLite: synchronous=FULL; PostgreSQL: synchronous_commit=on), so a
// power cut right after `embassyctl revoke` cannot undo the revocation.
func OpenDurableDB(ctx context.Context, dsn string) (*DB, error) {
	if IsPostgresDSN(dsn) {
		return openPostgresDB(ctx, dsn, "on")
	}
	return openDB(ctx, dsn, "FULL")
}

func openPostgresDB(ctx context.Context, dsn, synchronousCommit string) (*DB, error) {
	pdb, err := openPostgres(dsn, synchronousCommit)
	if err != nil {
		return nil, err
	}
	pdb.SetMaxIdleConns(maxIdleConns)
	pdb.SetMaxOpenConns(maxIdleConns)
	return newDB(ctx, pdb, true)
}

func openDB(ctx context.Context, path, synchronous string) (*DB, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous("+synchronous+")")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	sdb, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("verifier: open %s: %w", path, err)
	}
	// database/sql keeps only two idle connections by default: under
	// concurrent requests the others are closed after each use and
	// reopened, paying for the pragmas, the schema parse and re-preparing
	// the hot statements every time.
	sdb.SetMaxIdleConns(maxIdleConns)
	return newDB(ctx, sdb, false)
}

// newDB migrates db and returns it as a DB, closing it on error.
func newDB(ctx context.Context, db *sql.DB, pg bool) (*DB, error) {
	d := &DB{db: db, pg: pg, now: time.Now}
	if err := d.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return d, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

// SetClock replaces the clock (tests).
func (d *DB) SetClock(now func() time.Time) { d.now = now }

func (d *DB) migrate(ctx context.Context) error {
	// The transaction holds the write lock, so processes starting at once
	// migrate one after the other.
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("verifier: migrate: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("verifier: migrate: %w", err)
	}
	var v int
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version VALUES (0)`); err != nil {
			return fmt.Errorf("verifier: migrate: %w", err)
		}
	case err != nil:
		return fmt.Errorf("verifier: migrate: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("%w: version %d, this program knows %d", ErrSchemaTooNew, v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		m := migrations[i]
		if d.pg {
			m = postgresSchema(m)
		}
		if _, err := tx.ExecContext(ctx, m); err != nil {
			return fmt.Errorf("verifier: migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, len(migrations)); err != nil {
		return fmt.Errorf("verifier: migrate: %w", err)
	}
	return tx.Commit()
}

// Setting returns a setting's value, or def when unset.
func (d *DB) Setting(ctx context.Context, key, def string) (string, error) {
	var v string
	err := d.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return def, nil
	}
	return v, err
}

// withTx runs f in a write transaction: immediate on SQLite, holding the
// write lock (beginSQL) on PostgreSQL. Either way write transactions run
// one at a time, across processes too.
func (d *DB) withTx(ctx context.Context, f func(*sql.Tx) error) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("verifier: begin: %w", err)
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("verifier: commit: %w", err)
	}
	return nil
}

// Prepared statements for the hot path: without them the driver parses the
// SQL text on every call, a large share of the verifier's CPU time.
func (d *DB) prep(q string) (*sql.Stmt, error) {
	if st, ok := d.stmts.Load(q); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := d.db.Prepare(q)
	if err != nil {
		return nil, fmt.Errorf("verifier: prepare: %w", err)
	}
	if prev, loaded := d.stmts.LoadOrStore(q, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// errRow lets the row helpers report a prepare error through Scan.
type rowScanner interface{ Scan(dest ...any) error }

type errRow struct{ err error }

func (e errRow) Scan(...any) error { return e.err }

func (d *DB) queryRow(ctx context.Context, q string, args ...any) rowScanner {
	st, err := d.prep(q)
	if err != nil {
		return errRow{err}
	}
	return st.QueryRowContext(ctx, args...)
}

func (d *DB) txQueryRow(ctx context.Context, tx *sql.Tx, q string, args ...any) rowScanner {
	st, err := d.prep(q)
	if err != nil {
		return errRow{err}
	}
	return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
}

func (d *DB) txExec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	st, err := d.prep(q)
	if err != nil {
		return nil, err
	}
	return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
}

// queryAll runs the query q and reads every row with scan; what names the
// query in the error.
func queryAll[T any](ctx context.Context, d *DB, what, q string, args []any, scan func(*sql.Rows) (T, error)) ([]T, error) {
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("verifier: %s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
