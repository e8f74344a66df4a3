//go:build !embassy_issue17

// The enroll command before threshold key grants (one verifier database,
// the verifier deals its own share); enroll_ceremony.go replaces it once
// the issue 17 branches are merged.

package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"

	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

func runEnroll(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("enroll", "[--db D] --id ID (--ek-cert F | --ek-pub F) [--json]", stdout, stderr)
	id := fs.String("id", "", "appliance id (letters, digits, . _ -; at most 64)")
	certPath := fs.String("ek-cert", "", "EK certificate (PEM or DER); validated against the EK roots when any are configured")
	pubPath := fs.String("ek-pub", "", "EK public key (PEM or DER PKIX), when the TPM has no certificate")
	if err := fs.require("id").parse(args); err != nil {
		return err
	}
	if (*certPath == "") == (*pubPath == "") {
		return fs.usageError("exactly one of --ek-cert or --ek-pub required")
	}
	p := verifier.EnrollParams{ID: *id, Actor: *df.actor}
	if *certPath != "" {
		c, err := pki.ReadCertFile(*certPath)
		if err != nil {
			return err
		}
		p.EKCert = c.Raw
	} else {
		b, err := os.ReadFile(*pubPath)
		if err != nil {
			return err
		}
		if blk, _ := pem.Decode(b); blk != nil {
			b = blk.Bytes
		}
		if p.EKPublic, err = x509.ParsePKIXPublicKey(b); err != nil {
			return fmt.Errorf("%s: %w", *pubPath, err)
		}
	}
	return df.withDB(func(ctx context.Context, db *verifier.DB) error {
		if err := db.Enroll(ctx, p); err != nil {
			return err
		}
		a, err := db.Appliance(ctx, *id)
		if err != nil {
			return err
		}
		if *df.json {
			return printJSON(stdout, a)
		}
		fmt.Fprintf(stdout, "enrolled %s (EK sha256 %s); the appliance completes enrollment on first contact\n", a.ID, a.EKSHA256)
		return nil
	})
}
