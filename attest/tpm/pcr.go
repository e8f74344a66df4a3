package tpm

import (
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// Embassy's PCR assignments (see docs/attestation.md).
const (
	// PCRPhase is extended by the appliance right after it unlocks its
	// store, so the local key share (sealed to this PCR's initial value)
	// cannot be unsealed again until the next boot.
	PCRPhase = 14
	// PCRAppliance holds the appliance's own measurement log (its binary
	// and configuration; package attest/measure).
	PCRAppliance = 15
)

// FirmwarePCRs are the PCRs whose values form the per-machine firmware
// baseline recorded at enrollment.
var FirmwarePCRs = []int{0, 1, 2, 3, 5, 6, 7}

// Extend extends the SHA-256 bank of PCR index with digest (32 bytes).
func Extend(rw io.ReadWriter, index int, digest []byte) error {
	if len(digest) != sha256.Size {
		return fmt.Errorf("tpm: extend PCR %d: digest of %d bytes, want %d", index, len(digest), sha256.Size)
	}
	if err := tpm2.PCRExtend(rw, tpmutil.Handle(index), tpm2.AlgSHA256, digest, ""); err != nil {
		return fmt.Errorf("tpm: extend PCR %d: %w", index, err)
	}
	return nil
}

// ReadPCRs reads the SHA-256 bank values of the given PCRs.
func ReadPCRs(rw io.ReadWriter, pcrs []int) (map[int][]byte, error) {
	out := make(map[int][]byte, len(pcrs))
	// TPM2_PCR_Read returns at most 8 PCRs per call; ask in small groups.
	for i := 0; i < len(pcrs); i += 8 {
		j := min(i+8, len(pcrs))
		vals, err := tpm2.ReadPCRs(rw, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: pcrs[i:j]})
		if err != nil {
			return nil, fmt.Errorf("tpm: read PCRs: %w", err)
		}
		for k, v := range vals {
			out[k] = v
		}
	}
	return out, nil
}
