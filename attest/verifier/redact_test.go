package verifier_test

import (
	"strings"
	"testing"

	"github.com/dataembassy/embassy/attest/verifier"
)

// TestRedactDSN: a PostgreSQL password never reaches the log.
func TestRedactDSN(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/var/lib/embassy/verifier.db", "/var/lib/embassy/verifier.db"},
		{"postgres://embassy:s3cret@db.example:5432/verifier", "postgres://embassy:xxxxx@db.example:5432/verifier"},
		{"postgresql://embassy@/verifier?host=/run/postgresql&password=s3cret", "postgresql://embassy@/verifier?host=%2Frun%2Fpostgresql&password=xxxxx"},
		{"postgres://%zz", "postgres://(unparsable URL)"},
		{"POSTGRES://embassy:s3cret@db/verifier", "postgres://embassy:xxxxx@db/verifier"},
	} {
		if got := verifier.RedactDSN(tc.in); got != tc.want || strings.Contains(got, "s3cret") {
			t.Errorf("verifier.RedactDSN(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
