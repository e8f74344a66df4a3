package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/dataembassy/embassy/attest/verifier"
)

// Enrolment and release publication reach every verifier of a k-of-n
// rack: their --db may be repeated, one per verifier database.

// dbList is a flag that may be given more than once.
type dbList []string

func (l *dbList) String() string { return strings.Join(*l, ",") }

// Set appends one database path.
func (l *dbList) Set(v string) error {
	if v == "" {
		return errors.New("empty database path")
	}
	*l = append(*l, v)
	return nil
}

// multiDBFlags are the flags of a command working on several verifier
// databases.
type multiDBFlags struct {
	paths *dbList
	actor *string
	json  *bool
}

// newMultiDBFlags returns the flag set of a command that takes --db once
// per verifier database (none: the one default database).
func newMultiDBFlags(name, synopsis string, stdout, stderr io.Writer) (*cmdFlags, multiDBFlags) {
	fs := newFlags(name, synopsis, stdout, stderr)
	d := multiDBFlags{paths: &dbList{}}
	fs.Var(d.paths, "db", fmt.Sprintf("verifier database; repeat once per verifier (default %s, env EMBASSY_VERIFIER_DB)", defaultDBPath()))
	d.actor = addActorFlag(fs)
	d.json = fs.Bool("json", false, "print JSON")
	return fs, d
}

// list returns the databases named, or the default one.
func (d multiDBFlags) list() []string {
	if len(*d.paths) == 0 {
		return []string{defaultDBPath()}
	}
	return *d.paths
}

// unique fails with a usage error when one database is named twice (it
// would get two shares, or one release twice).
func (d multiDBFlags) unique(fs *cmdFlags) error {
	seen := map[string]bool{}
	for _, p := range d.list() {
		if seen[p] {
			return fs.usageError("--db %s given twice", p)
		}
		seen[p] = true
	}
	return nil
}

// verifierDB is one opened verifier database.
type verifierDB struct {
	path string
	db   *verifier.DB
}

// withDBs opens every database (all or none), runs f
// on them in the order given and closes them.
func (d multiDBFlags) withDBs(f func(context.Context, []verifierDB) error) error {
	var dbs []verifierDB
	defer func() {
		for _, v := range dbs {
			v.db.Close()
		}
	}()
	for _, p := range d.list() {
		db, err := openDB(p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		dbs = append(dbs, verifierDB{path: p, db: db})
	}
	return f(context.Background(), dbs)
}
