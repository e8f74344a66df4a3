package verifier

import (
	"crypto/x509"
	"fmt"
)

// checkServerCert accepts a reported NBD server certificate (or none): it
// must parse and name the appliance, so that what clients pin says whom it
// is for. An admitted one is recorded with the decision
// (DB.recordServerIdentity).
func checkServerCert(id string, der []byte) error {
	if der == nil {
		return nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return badRequest(fmt.Errorf("server_cert: %v", err))
	}
	if c.Subject.CommonName != id {
		return badRequest(fmt.Errorf("server_cert names %q, not appliance %q", c.Subject.CommonName, id))
	}
	return nil
}
