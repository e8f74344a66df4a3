package agent

import (
	"errors"
	"fmt"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
)

// ErrImport reports that the TPM refused the remote share: another TPM's
// EK, or PCRs other than those the verifier bound it to.
var ErrImport = errors.New("agent: TPM refused to import the remote share")

// importShare imports one verifier's granted share with the EK. The TPM
// refuses a blob made for another TPM's EK or for other PCR values; the
// share itself is checked against the others by keys.Combine.
func importShare(ek *client.Key, blob *tpmpb.ImportBlob) (*keys.Share, error) {
	raw, err := ek.Import(blob)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrImport, err)
	}
	defer clear(raw)
	share, err := keys.ParseShare(raw)
	if err != nil {
		return nil, fmt.Errorf("agent: granted share: %w", err)
	}
	return share, nil
}
