package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"

	"github.com/dataembassy/embassy/attest/verifier"
)

// The enrollment, appliance, revocation, audit and release-publication
// commands work on the verifier's SQLite database directly, on the
// verifier host (see docs/attestation.md, "Operator access").

const defaultDB = "/var/lib/embassy/verifier.db"

// dbFlags are the flags every verifier-state command takes.
type dbFlags struct {
	path  *string
	actor *string
	json  *bool
}

func addDBFlags(fs *cmdFlags) dbFlags {
	return dbFlags{
		path:  fs.String("db", defaultDBPath(), "verifier database (env EMBASSY_VERIFIER_DB)"),
		actor: addActorFlag(fs),
		json:  fs.Bool("json", false, "print JSON"),
	}
}

// defaultDBPath is the verifier database used when --db is not given.
func defaultDBPath() string {
	if def := os.Getenv("EMBASSY_VERIFIER_DB"); def != "" {
		return def
	}
	return defaultDB
}

// addActorFlag declares --actor, defaulting to the user's name.
func addActorFlag(fs *cmdFlags) *string {
	who := "operator"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	return fs.String("actor", who, "operator name recorded in the audit log")
}

// newDBFlags returns the flag set of a verifier-state command with the
// database flags added.
func newDBFlags(name, synopsis string, stdout, stderr io.Writer) (*cmdFlags, dbFlags) {
	fs := newFlags(name, synopsis, stdout, stderr)
	return fs, addDBFlags(fs)
}

func (d dbFlags) open() (*verifier.DB, error) { return openDB(*d.path) }

// openDB opens an existing verifier database, durably (operators'
// changes survive a power cut).
func openDB(path string) (*verifier.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("verifier database: %w", err)
	}
	return verifier.OpenDurableDB(context.Background(), path)
}

// withDB opens the verifier database, runs f on it and closes it.
func (d dbFlags) withDB(f func(context.Context, *verifier.DB) error) error {
	db, err := d.open()
	if err != nil {
		return err
	}
	defer db.Close()
	return f(context.Background(), db)
}

// listCommand makes the subcommand "name [--db D] [--json]" that prints
// the list load reads from the verifier database (see printRows).
func listCommand[T any](name, header string, load func(*verifier.DB, context.Context) ([]T, error), row func(io.Writer, T)) subcommand {
	return func(args []string, stdout, stderr io.Writer) error {
		fs, df := newDBFlags(name, "[--db D] [--json]", stdout, stderr)
		if err := fs.parse(args); err != nil {
			return err
		}
		return df.withDB(func(ctx context.Context, db *verifier.DB) error {
			list, err := load(db, ctx)
			if err != nil {
				return err
			}
			return printRows(stdout, *df.json, list, header, row)
		})
	}
}
