package agent

import (
	"fmt"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
)

// tpmRound holds the TPM keys of one round of attestations to all
// verifiers: the AK quotes for each of them and the EK imports each granted
// share, each key made once per round rather than once per verifier (a
// primary key is the TPM's most expensive command). Every method holds the
// agent's tpmMu, so TPM commands stay one at a time.
type tpmRound struct {
	a      *Agent
	ak, ek *client.Key
}

// quote makes the attestation over extra with the round's AK.
func (r *tpmRound) quote(extra []byte) ([]byte, error) {
	r.a.tpmMu.Lock()
	defer r.a.tpmMu.Unlock()
	if r.ak == nil {
		ak, err := client.AttestationKeyRSA(r.a.cfg.TPM)
		if err != nil {
			return nil, fmt.Errorf("agent: AK: %w", err)
		}
		r.ak = ak
	}
	return r.a.attestation(r.ak, extra)
}

// importShare imports one verifier's granted share with the EK.
func (r *tpmRound) importShare(blob *tpmpb.ImportBlob) (*keys.Share, error) {
	r.a.tpmMu.Lock()
	defer r.a.tpmMu.Unlock()
	if r.ek == nil {
		ek, err := client.EndorsementKeyRSA(r.a.cfg.TPM)
		if err != nil {
			return nil, fmt.Errorf("agent: EK: %w", err)
		}
		r.ek = ek
	}
	return importShare(r.ek, blob)
}

// close flushes the round's keys from the TPM.
func (r *tpmRound) close() {
	r.a.tpmMu.Lock()
	defer r.a.tpmMu.Unlock()
	for _, k := range []*client.Key{r.ak, r.ek} {
		if k != nil {
			k.Close()
		}
	}
	r.ak, r.ek = nil, nil
}

// newRound starts a round; close it when its replies are handled. It makes
// the round's keys at once, while the nonces are on their way and the TPM
// would otherwise be idle: the AK, and for an unlock the EK.
func (a *Agent) newRound(unlock bool) *tpmRound {
	r := &tpmRound{a: a}
	a.tpmMu.Lock()
	go func() {
		defer a.tpmMu.Unlock()
		// Errors are left for quote and importShare to meet and report.
		if ak, err := client.AttestationKeyRSA(a.cfg.TPM); err == nil {
			r.ak = ak
		}
		if unlock {
			if ek, err := client.EndorsementKeyRSA(a.cfg.TPM); err == nil {
				r.ek = ek
			}
		}
	}()
	return r
}
