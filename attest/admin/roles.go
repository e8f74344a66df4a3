package admin

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dataembassy/embassy/internal/pki"
)

// Role is an operator's role, an OrganizationalUnit value of the operator's
// certificate.
type Role string

// The roles. Each endpoint needs one of them (routes); an operator may hold
// several.
const (
	// Viewer reads appliances, EK roots, releases, release keys, the
	// fleet page and the metrics.
	Viewer Role = "viewer"
	// Enroller enrolls appliances and sets their baselines.
	Enroller Role = "enroller"
	// Revoker revokes appliances.
	Revoker Role = "revoker"
	// Publisher publishes and withdraws releases.
	Publisher Role = "publisher"
	// Trustee changes the trust anchors: the release officers' keys, the
	// release threshold k and the TPM manufacturers' EK roots.
	Trustee Role = "trustee"
	// Auditor reads and verifies the audit log.
	Auditor Role = "auditor"
)

// Roles lists every role, in the order docs/admin-api.md gives them.
var Roles = []Role{Viewer, Enroller, Revoker, Publisher, Trustee, Auditor}

// ErrConflictingRoles is a set of roles no one operator may hold:
// publisher with trustee would let one certificate trust its own release
// key, set the threshold to 1 and publish, undoing k-of-n release
// signing.
var ErrConflictingRoles = errors.New("admin: the publisher and trustee roles are never held together")

// checkRoles refuses a conflicting set of roles.
func checkRoles(roles []Role) error {
	if slices.Contains(roles, Publisher) && slices.Contains(roles, Trustee) {
		return ErrConflictingRoles
	}
	return nil
}

// ParseRoles parses a comma-separated list of role names, refusing an
// unknown or repeated one.
func ParseRoles(s string) ([]Role, error) {
	var out []Role
	for _, name := range strings.Split(s, ",") {
		r := Role(strings.TrimSpace(name))
		if !slices.Contains(Roles, r) {
			return nil, fmt.Errorf("admin: unknown role %q (roles: %s)", r, roleList(Roles))
		}
		if slices.Contains(out, r) {
			return nil, fmt.Errorf("admin: role %q given twice", r)
		}
		out = append(out, r)
	}
	if err := checkRoles(out); err != nil {
		return nil, err
	}
	return out, nil
}

// IssueOptions returns the pki options of an operator certificate for name
// with roles, valid for validity.
func IssueOptions(name string, roles []Role, validity time.Duration) pki.LeafOptions {
	o := pki.LeafOptions{CommonName: name, Usage: pki.Client, Validity: validity}
	for _, r := range roles {
		o.Roles = append(o.Roles, string(r))
	}
	return o
}

// roleList joins roles for messages.
func roleList(roles []Role) string {
	if len(roles) == 0 {
		return "none"
	}
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ",")
}
