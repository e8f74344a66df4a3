package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/internal/pki"
)

// storedShare reads the share row a verifier database holds for id.
func storedShare(t *testing.T, db, id string) *keys.Share {
	t.Helper()
	raw, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var sh keys.Share
	var set, commit []byte
	if err := raw.QueryRow(`SELECT remote_share, share_set, share_k, share_n, share_index, share_commit FROM appliances WHERE id = ?`, id).
		Scan(&sh.Value, &set, &sh.Threshold, &sh.Total, &sh.Index, &commit); err != nil {
		t.Fatalf("%s: %v", db, err)
	}
	copy(sh.Set[:], set)
	copy(sh.Commit[:], commit)
	return &sh
}

// TestEnrollThreshold: one enroll with --db repeated deals k-of-n shares
// and enrolls the EK into every database with its own share; a database
// that refuses (here: it has EK roots, so a bare EK public key is not
// enough) is reported and the others keep their share; the threshold is
// checked against the number of databases.
func TestEnrollThreshold(t *testing.T) {
	a, b, c := newDB(t), newDB(t), newDB(t)
	ek := writeEKPub(t)
	ca, err := pki.NewCA("TPM vendor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root.pem")
	os.WriteFile(root, ca.CertPEM(), 0o644)
	if out, code := ctl(t, "ekroot", "add", "--db", c, root); code != 0 {
		t.Fatalf("ekroot add: %s", out)
	}

	for _, args := range [][]string{
		{"--db", a, "--db", b, "--db", c},                     // k required with n > 1
		{"--db", a, "--db", b, "--db", c, "--threshold", "4"}, // k > n
		{"--db", a, "--db", b, "--threshold", "0"},            // k < 1
		{"--db", a, "--db", a, "--threshold", "1"},            // one database twice
	} {
		out, code := ctl(t, append(append([]string{"enroll"}, args...), "--id", "rack1", "--ek-pub", ek)...)
		if code != 2 || !strings.Contains(out, "usage") {
			t.Errorf("%q: exit %d\n%s", args, code, out)
		}
	}

	out, code := ctl(t, "enroll", "--db", a, "--db", b, "--db", c, "--threshold", "2", "--id", "rack1", "--ek-pub", ek)
	if code != 1 {
		t.Fatalf("enroll with one database refusing: exit %d\n%s", code, out)
	}
	for _, want := range []string{"dealt 2-of-3 key shares for rack1", "share 1  " + a, "share 2  " + b, "share 3  " + c + "  FAILED", "EK certificate is required",
		"enrolled at 2 of 3 verifiers, 2 still grant the key (threshold 2)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	sa, sb := storedShare(t, a, "rack1"), storedShare(t, b, "rack1")
	if len(sa.Value) != 32 || len(sb.Value) != 32 || bytes.Equal(sa.Value, sb.Value) || sa.Set != sb.Set || sa.Index == sb.Index {
		t.Errorf("shares %+v and %+v: want two different 32-byte shares of one set", sa, sb)
	}
	// The two databases together hold the remote secret; one alone does not.
	if r, err := keys.Combine("rack1", []*keys.Share{sa, sb}); err != nil || len(r.Secret) != keys.ShareSize {
		t.Errorf("combining the two enrolled shares: %v", err)
	}
	if _, err := keys.Combine("rack1", []*keys.Share{sa}); !errors.Is(err, keys.ErrTooFewShares) {
		t.Errorf("one database's share: %v, want ErrTooFewShares", err)
	}
	// Nothing is enrolled when a database already knows the appliance.
	d := newDB(t)
	out, code = ctl(t, "enroll", "--db", d, "--db", a, "--threshold", "1", "--id", "rack1", "--ek-pub", ek)
	if code != 1 || !strings.Contains(out, "already exists") {
		t.Fatalf("enroll into a database that has it: exit %d\n%s", code, out)
	}
	if out, _ := ctl(t, "appliances", "list", "--db", d); strings.Contains(out, "rack1") {
		t.Errorf("enrolled into %s though %s refused first:\n%s", d, a, out)
	}

	// One --db is the 1-of-1 case.
	out, code = ctl(t, "enroll", "--db", d, "--id", "rack2", "--ek-pub", ek, "--json")
	var res enrollment
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Threshold != 1 || res.Total != 1 || len(res.Verifiers) != 1 ||
		!res.Verifiers[0].Enrolled || res.Verifiers[0].Share != 1 || len(res.Set) != 32 {
		t.Fatalf("1-of-1: exit %d\n%s", code, out)
	}
}
