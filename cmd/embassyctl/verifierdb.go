package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"text/tabwriter"

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

func addDBFlags(fs *flag.FlagSet) dbFlags {
	def := os.Getenv("EMBASSY_VERIFIER_DB")
	if def == "" {
		def = defaultDB
	}
	who := "operator"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	return dbFlags{
		path:  fs.String("db", def, "verifier database (env EMBASSY_VERIFIER_DB)"),
		actor: fs.String("actor", who, "operator name recorded in the audit log"),
		json:  fs.Bool("json", false, "print JSON"),
	}
}

func (d dbFlags) open() (*verifier.DB, error) {
	if _, err := os.Stat(*d.path); err != nil {
		return nil, fmt.Errorf("verifier database: %w", err)
	}
	return verifier.OpenDurableDB(context.Background(), *d.path)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// readCertFile reads a PEM or DER certificate.
func readCertFile(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	c, err := x509.ParseCertificate(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// subcommands dispatches "name sub args" with a usage text.
func subcommands(args []string, stdout, stderr io.Writer, usage string, subs map[string]func([]string, io.Writer, io.Writer) error) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: missing subcommand", errUsage)
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return flag.ErrHelp
	}
	f, ok := subs[args[0]]
	if !ok {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
	}
	return f(args[1:], stdout, stderr)
}

var errNoArgs = errors.New("unexpected arguments")

// withDB opens the verifier database, runs f on it and closes it.
func (d dbFlags) withDB(f func(context.Context, *verifier.DB) error) error {
	db, err := d.open()
	if err != nil {
		return err
	}
	defer db.Close()
	return f(context.Background(), db)
}

// newTable returns a tab-aligned table writer with header (tab-separated
// column names) written; the caller flushes it.
func newTable(w io.Writer, header string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header != "" {
		fmt.Fprintln(tw, header)
	}
	return tw
}

// usageError prints fs's usage and returns a usage error saying what is
// missing or wrong.
func usageError(fs *flag.FlagSet, what string) error {
	fs.Usage()
	return fmt.Errorf("%w: %s", errUsage, what)
}
