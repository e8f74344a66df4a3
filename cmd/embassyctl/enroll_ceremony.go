package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

func runEnroll(args []string, stdout, stderr io.Writer) error {
	fs, df := newMultiDBFlags("enroll", "[--verifier URL | --db D]... [--threshold K] --id ID (--ek-cert F | --ek-pub F) [--json]", stdout, stderr)
	id := fs.String("id", "", "appliance id (letters, digits, . _ -; at most 64)")
	certPath := fs.String("ek-cert", "", "EK certificate (PEM or DER); each verifier validates it against its EK roots when it has any")
	pubPath := fs.String("ek-pub", "", "EK public key (PEM or DER PKIX), when the TPM has no certificate")
	threshold := fs.Int("threshold", 0, "k: how many of the verifiers (one per --verifier or --db) must grant the key (default 1 with one verifier; required with more)")
	if err := fs.require("id").parse(args); err != nil {
		return err
	}
	if (*certPath == "") == (*pubPath == "") {
		return fs.usageError("exactly one of --ek-cert or --ek-pub required")
	}
	names, err := df.names()
	if err != nil {
		return err
	}
	n := len(names)
	k := *threshold
	if k == 0 && n == 1 {
		k = 1
	}
	switch {
	case n > keys.MaxShares:
		return fs.usageError("at most %d verifiers, got %d", keys.MaxShares, n)
	case k == 0:
		return fs.usageError("--threshold required with %d verifiers", n)
	case k < 1 || k > n:
		return fs.usageError("--threshold %d: need 1 <= k <= %d (the number of verifiers)", k, n)
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
	return df.withDBs(func(ctx context.Context, dbs []verifierDB) error {
		res, err := enrollEverywhere(ctx, dbs, p, k)
		if err != nil {
			return err
		}
		if *df.json {
			if err := printJSON(stdout, res); err != nil {
				return err
			}
		} else {
			res.print(stdout)
		}
		return res.err()
	})
}

// One enrolment ceremony reaches every verifier of the rack: embassyctl
// deals the remote secret k of n in memory (keys.Deal), hands each
// verifier database its own share with the EK, and zeroizes the shares.
// No share is written anywhere else; with one database this is the 1-of-1
// case.

// enrollment is what one enroll did, per verifier database (--json).
type enrollment struct {
	Appliance string       `json:"appliance"`
	Set       string       `json:"set"`
	Threshold int          `json:"threshold"`
	Total     int          `json:"total"`
	Verifiers []enrolledAt `json:"verifiers"`
}

// enrolledAt is one verifier database's outcome.
type enrolledAt struct {
	DB       string `json:"db"`
	Share    int    `json:"share"`
	Enrolled bool   `json:"enrolled"`
	EKSHA256 string `json:"ek_sha256,omitempty"`
	Error    string `json:"error,omitempty"`
}

// enrollEverywhere enrolls p.ID into every database, share i into
// database i of a fresh k-of-len(dbs) dealing. It enrolls nothing when a
// database cannot be read or already knows the appliance; after that a
// database that refuses (say, the EK certificate does not chain to its
// roots) is reported in the result and the others still get their share.
func enrollEverywhere(ctx context.Context, dbs []verifierDB, p verifier.EnrollParams, k int) (*enrollment, error) {
	for _, v := range dbs {
		_, err := v.db.Appliance(ctx, p.ID)
		if err == nil {
			return nil, fmt.Errorf("%s: %w: appliance %q already exists there; nothing enrolled", v.path, verifier.ErrExists, p.ID)
		}
		if !errors.Is(err, verifier.ErrNotFound) {
			return nil, fmt.Errorf("%s: %w", v.path, err)
		}
	}
	shares, err := keys.Deal(p.ID, k, len(dbs))
	if err != nil {
		return nil, fmt.Errorf("dealing %d-of-%d key shares: %w", k, len(dbs), err)
	}
	defer func() {
		for _, s := range shares {
			clear(s.Value)
		}
	}()
	res := &enrollment{Appliance: p.ID, Set: shares[0].Set.String(), Threshold: k, Total: len(dbs)}
	for i, v := range dbs {
		at := enrolledAt{DB: v.path, Share: shares[i].Index}
		pi := p
		pi.Share = shares[i]
		if err := v.db.Enroll(ctx, pi); err != nil {
			at.Error = err.Error()
		} else if a, err := v.db.Appliance(ctx, p.ID); err != nil {
			at.Error = fmt.Sprintf("enrolled, but reading it back: %v", err)
		} else {
			at.Enrolled, at.EKSHA256 = true, a.EKSHA256
		}
		// The database holds the share now (or refused it): this copy
		// goes at once.
		clear(shares[i].Value)
		res.Verifiers = append(res.Verifiers, at)
	}
	return res, nil
}

// enrolled counts the databases that hold their share.
func (e *enrollment) enrolled() int {
	n := 0
	for _, v := range e.Verifiers {
		if v.Enrolled {
			n++
		}
	}
	return n
}

// err reports the databases that refused, and whether the appliance can
// still get its key (at least k enrolled).
func (e *enrollment) err() error {
	var failed []string
	for _, v := range e.Verifiers {
		if !v.Enrolled {
			failed = append(failed, fmt.Sprintf("%s: %s", v.DB, v.Error))
		}
	}
	if len(failed) == 0 {
		return nil
	}
	n := e.enrolled()
	consequence := fmt.Sprintf("%d still grant the key (threshold %d)", n, e.Threshold)
	if n < e.Threshold {
		consequence = fmt.Sprintf("the appliance cannot get its key from %d (threshold %d)", n, e.Threshold)
	}
	return fmt.Errorf("enrolled at %d of %d verifiers, %s; refused by %s", n, e.Total, consequence, strings.Join(failed, "; "))
}

// print writes the ceremony's outcome, one line per verifier database.
func (e *enrollment) print(w io.Writer) {
	fmt.Fprintf(w, "dealt %d-of-%d key shares for %s (set %s): each verifier database got its own, none was kept\n", e.Threshold, e.Total, e.Appliance, e.Set)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, v := range e.Verifiers {
		what := "enrolled (EK sha256 " + v.EKSHA256 + ")"
		if !v.Enrolled {
			what = "FAILED: " + v.Error
		}
		fmt.Fprintf(tw, "  share %d\t%s\t%s\n", v.Share, v.DB, what)
	}
	tw.Flush()
	if e.enrolled() > 0 {
		fmt.Fprintln(w, "the appliance completes enrollment with each verifier on first contact")
	}
}
