package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/internal/pki"
)

func init() {
	register(command{name: "operator", summary: "the operators' CA and operator certificates for the verifier's admin API: init-ca, issue", run: runOperator})
}

const operatorUsage = `usage: embassyctl operator init-ca --dir D [--validity DURATION]
       embassyctl operator issue --ca-dir D --name NAME --roles R[,R...] --out DIR [--validity DURATION]

init-ca creates the operators' CA: D/ca.pem (give it to each verifier as
--operator-ca) and D/ca-key.pem (keep it offline). issue writes an
operator certificate and key, DIR/NAME-cert.pem and DIR/NAME-key.pem, for
embassyctl's --cert and --key. The roles are viewer, enroller, revoker,
publisher, trustee and auditor (docs/admin-api.md); publisher and trustee
never go together.
`

func runOperator(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, operatorUsage, map[string]subcommand{
		"init-ca": operatorInitCA,
		"issue":   operatorIssue,
	})
}

func operatorInitCA(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("operator init-ca", "--dir D [--validity DURATION]", stdout, stderr)
	dir := fs.String("dir", "", "directory for ca.pem and ca-key.pem (created)")
	validity := fs.Duration("validity", 10*365*24*time.Hour, "how long the CA is valid")
	if err := fs.require("dir").parse(args); err != nil {
		return err
	}
	if *validity <= 0 {
		return fs.usageError("--validity must be positive")
	}
	ca, err := pki.NewCA("Embassy operators CA", *validity)
	if err != nil {
		return err
	}
	if err := ca.WriteFiles(*dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (verifiers' --operator-ca) and %s (keep offline)\n", filepath.Join(*dir, "ca.pem"), filepath.Join(*dir, "ca-key.pem"))
	return nil
}

// operatorName is what an operator's name may be: it names files and the
// audit log's actor.
var operatorName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

func operatorIssue(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("operator issue", "--ca-dir D --name NAME --roles R[,R...] --out DIR [--validity DURATION]", stdout, stderr)
	caDir := fs.String("ca-dir", "", "the operators' CA directory (init-ca)")
	name := fs.String("name", "", "the operator's name: the certificate's CN, as the audit log records it")
	roles := fs.String("roles", "", "comma-separated roles: viewer, enroller, revoker, publisher, trustee, auditor (not publisher with trustee)")
	out := fs.String("out", "", "directory for NAME-cert.pem and NAME-key.pem (created)")
	validity := fs.Duration("validity", 90*24*time.Hour, "how long the certificate is valid (there is no revocation: keep it short)")
	if err := fs.require("ca-dir", "name", "roles", "out").parse(args); err != nil {
		return err
	}
	if !operatorName.MatchString(*name) {
		return fs.usageError("--name %q: letters, digits, . _ @ -, at most 64", *name)
	}
	rs, err := admin.ParseRoles(*roles)
	if err != nil {
		return fs.usageError("--roles: %v", err)
	}
	if *validity <= 0 {
		return fs.usageError("--validity must be positive")
	}
	ca, err := pki.LoadCA(*caDir)
	if err != nil {
		return err
	}
	leaf, err := ca.Issue(admin.IssueOptions(*name, rs, *validity))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(*out, *name+"-cert.pem"), filepath.Join(*out, *name+"-key.pem")
	if err := writeNew(keyPath, leaf.KeyPEM(), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, leaf.CertPEM(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "operator %s, roles %v, valid until %s: %s %s\n", *name, rs, leaf.Cert.NotAfter.UTC().Format(time.RFC3339), certPath, keyPath)
	return nil
}
