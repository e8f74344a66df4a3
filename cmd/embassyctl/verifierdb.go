package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// The enrollment, appliance, revocation, audit and release-publication
// commands work on a verifier's state: through its admin API
// (docs/admin-api.md) as an operator with a certificate of the operators'
// CA, by default; or, in recovery mode only, on its database directly
// (--db: the SQLite file on the verifier host, or a postgres:// URL).

// verifierState is what those commands use of a verifier: *admin.Client
// (the admin API) and *verifier.DB (recovery mode) both have it. The actor
// arguments name the operator for the database; the admin API ignores
// them and records the operator's certificate.
type verifierState interface {
	Appliances(ctx context.Context) ([]verifier.ApplianceInfo, error)
	Appliance(ctx context.Context, id string) (*verifier.ApplianceInfo, error)
	Enroll(ctx context.Context, p verifier.EnrollParams) error
	Revoke(ctx context.Context, id, reason, actor string) error
	AddEKRoot(ctx context.Context, cert *x509.Certificate, actor string) error
	EKRoots(ctx context.Context) ([]verifier.EKRoot, error)
	AuditRecords(ctx context.Context, f verifier.AuditFilter) ([]verifier.AuditRecord, error)
	VerifyAudit(ctx context.Context, wantHeadSeq int64, wantHead string) (*verifier.AuditReport, error)
	AddReleaseKey(ctx context.Context, pub ed25519.PublicKey, actor string) error
	SetReleaseThreshold(ctx context.Context, k int, actor string) error
	PublishRelease(ctx context.Context, env *release.Envelope, actor string) (*release.Verified, error)
	WithdrawRelease(ctx context.Context, digest, actor string) error
	Releases(ctx context.Context) ([]verifier.ReleaseInfo, error)
	Close() error
}

// recoveryWarning is printed on stderr whenever a command opens a
// database directly.
const recoveryWarning = "embassyctl: recovery mode: working on the verifier database directly, without the admin API's operator authentication and role checks\n"

// targetList is a flag that may be given more than once.
type targetList []string

func (l *targetList) String() string { return strings.Join(*l, ",") }

// Set appends one database path or URL.
func (l *targetList) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*l = append(*l, v)
	return nil
}

// connFlags say which verifiers a command works on and how to reach them.
type connFlags struct {
	fs            *cmdFlags
	multi         bool // --verifier and --db may be repeated
	urls, dbs     *targetList
	cert, key, ca *string
	actor         *string
}

// addConnFlags declares --verifier, --cert, --key, --ca, --db and --actor;
// with multi, --verifier and --db may be repeated, once per verifier.
func addConnFlags(fs *cmdFlags, multi bool) connFlags {
	c := connFlags{fs: fs, multi: multi, urls: &targetList{}, dbs: &targetList{}}
	repeat := ""
	if multi {
		repeat = "; repeat once per verifier"
	}
	fs.Var(c.urls, "verifier", "the `URL` of the verifier's admin API, https://HOST:PORT"+repeat+" (env EMBASSY_VERIFIER_URL)")
	c.cert = fs.String("cert", os.Getenv("EMBASSY_OPERATOR_CERT"), "operator certificate `FILE` (PEM; env EMBASSY_OPERATOR_CERT)")
	c.key = fs.String("key", os.Getenv("EMBASSY_OPERATOR_KEY"), "operator private key `FILE` (PEM; env EMBASSY_OPERATOR_KEY)")
	c.ca = fs.String("ca", os.Getenv("EMBASSY_OPERATOR_CA"), "the CA certificate `FILE` the verifier's server certificate chains to (PEM; default: the system's roots; env EMBASSY_OPERATOR_CA)")
	fs.Var(c.dbs, "db", "recovery mode: the verifier database itself, its SQLite file `PATH` on the verifier host or a postgres:// URL"+repeat+" (env EMBASSY_VERIFIER_DB)")
	who := "operator"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	c.actor = fs.String("actor", who, "recovery mode: operator `NAME` recorded in the audit log (the admin API records the certificate's)")
	return c
}

// targets returns the admin API URLs or the database paths to open
// (exactly one of them is non-empty), after the flags are parsed: flags
// first, then EMBASSY_VERIFIER_URL, then EMBASSY_VERIFIER_DB.
func (c connFlags) targets() (urls, dbs []string, err error) {
	urls, dbs = *c.urls, *c.dbs
	switch {
	case len(urls) > 0 && len(dbs) > 0:
		return nil, nil, c.fs.usageError("--verifier and --db exclude each other (--db is for recovery only)")
	case len(urls) == 0 && len(dbs) == 0:
		if u := os.Getenv("EMBASSY_VERIFIER_URL"); u != "" {
			urls = []string{u}
		} else if d := os.Getenv("EMBASSY_VERIFIER_DB"); d != "" {
			dbs = []string{d}
		} else {
			return nil, nil, c.fs.usageError("which verifier? --verifier URL (env EMBASSY_VERIFIER_URL), or --db PATH in recovery mode")
		}
	}
	all := append(append([]string(nil), urls...), dbs...)
	if !c.multi && len(all) > 1 {
		return nil, nil, c.fs.usageError("one verifier only, got %d", len(all))
	}
	seen := map[string]bool{}
	for _, t := range all {
		if seen[t] {
			return nil, nil, c.fs.usageError("%s given twice", verifier.RedactDSN(t))
		}
		seen[t] = true
	}
	if len(urls) > 0 {
		actorSet := false
		c.fs.Visit(func(f *flag.Flag) { actorSet = actorSet || f.Name == "actor" })
		if actorSet {
			return nil, nil, c.fs.usageError("--actor is for --db only: the admin API records the operator's certificate")
		}
		if *c.cert == "" || *c.key == "" {
			return nil, nil, c.fs.usageError("the admin API needs --cert and --key (env EMBASSY_OPERATOR_CERT, EMBASSY_OPERATOR_KEY)")
		}
	}
	return urls, dbs, nil
}

// names returns the verifiers the command will open, as targets checked
// them.
func (c connFlags) names() ([]string, error) {
	urls, dbs, err := c.targets()
	return append(urls, dbs...), err
}

// verifierDB is one opened verifier.
type verifierDB struct {
	// path is the database path (a PostgreSQL URL without its password)
	// or the admin API URL, as output names it.
	path string
	db   verifierState
}

// open opens every verifier named (all or none).
func (c connFlags) open() ([]verifierDB, error) {
	urls, dbs, err := c.targets()
	if err != nil {
		return nil, err
	}
	var out []verifierDB
	fail := func(err error) ([]verifierDB, error) {
		for _, v := range out {
			v.db.Close()
		}
		return nil, err
	}
	if len(urls) > 0 {
		cert, err := tls.LoadX509KeyPair(*c.cert, *c.key)
		if err != nil {
			return nil, fmt.Errorf("operator certificate: %w", err)
		}
		var roots *x509.CertPool
		if *c.ca != "" {
			if roots, err = pki.ReadPoolFile(*c.ca); err != nil {
				return nil, fmt.Errorf("--ca: %w", err)
			}
		}
		for _, u := range urls {
			cl, err := admin.NewClient(u, cert, roots)
			if err != nil {
				return fail(err)
			}
			out = append(out, verifierDB{path: u, db: cl})
		}
		return out, nil
	}
	fmt.Fprint(c.fs.stderr, recoveryWarning)
	for _, p := range dbs {
		name := verifier.RedactDSN(p) // what output and errors show
		db, err := openDB(p)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", name, err))
		}
		out = append(out, verifierDB{path: name, db: db})
	}
	return out, nil
}

// openDB opens an existing verifier database (a SQLite file or a
// postgres:// URL), durably (operators' changes survive a power cut).
func openDB(path string) (*verifier.DB, error) {
	if !verifier.IsPostgresDSN(path) {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("verifier database: %w", err)
		}
	}
	return verifier.OpenDurableDB(context.Background(), path)
}

// withDBs opens every verifier, runs f on them in the order given and
// closes them.
func (c connFlags) withDBs(f func(context.Context, []verifierDB) error) error {
	vs, err := c.open()
	if err != nil {
		return err
	}
	defer func() {
		for _, v := range vs {
			v.db.Close()
		}
	}()
	return f(context.Background(), vs)
}

// withDB opens the one verifier, runs f on it and closes it.
func (c connFlags) withDB(f func(context.Context, verifierState) error) error {
	return c.withDBs(func(ctx context.Context, vs []verifierDB) error { return f(ctx, vs[0].db) })
}

// dbFlags are the flags every single-verifier command takes.
type dbFlags struct {
	connFlags
	json *bool
}

// newDBFlags returns the flag set of a command on one verifier.
func newDBFlags(name, synopsis string, stdout, stderr io.Writer) (*cmdFlags, dbFlags) {
	fs := newFlags(name, synopsis, stdout, stderr)
	return fs, dbFlags{connFlags: addConnFlags(fs, false), json: fs.Bool("json", false, "print JSON")}
}

// newMultiDBFlags returns the flag set of a command that reaches every
// verifier of a k-of-n rack: --verifier (or --db) once per verifier.
func newMultiDBFlags(name, synopsis string, stdout, stderr io.Writer) (*cmdFlags, dbFlags) {
	fs := newFlags(name, synopsis, stdout, stderr)
	return fs, dbFlags{connFlags: addConnFlags(fs, true), json: fs.Bool("json", false, "print JSON")}
}

// listCommand makes the subcommand "name [--verifier URL | --db D]
// [--json]" that prints the list load reads from the verifier (see
// printRows).
func listCommand[T any](name, header string, load func(verifierState, context.Context) ([]T, error), row func(io.Writer, T)) subcommand {
	return func(args []string, stdout, stderr io.Writer) error {
		fs, df := newDBFlags(name, "[--verifier URL | --db D] [--json]", stdout, stderr)
		if err := fs.parse(args); err != nil {
			return err
		}
		return df.withDB(func(ctx context.Context, db verifierState) error {
			list, err := load(db, ctx)
			if err != nil {
				return err
			}
			return printRows(stdout, *df.json, list, header, row)
		})
	}
}
