package predict_test

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/dataembassy/embassy/images/predict"
)

// TestKernelBootPCR9 replays by hand what the Linux EFI stub extends on a
// QEMU -kernel boot through OVMF: the command line OVMF passes (with
// " initrd=initrd" appended) and then the initrd.
func TestKernelBootPCR9(t *testing.T) {
	cmdline, initrd := "console=ttyS0 panic=-1", []byte("initrd bytes")
	extend := func(pcr, d []byte) []byte {
		s := sha256.Sum256(append(append([]byte(nil), pcr...), d...))
		return s[:]
	}
	initrdSum := sha256.Sum256(initrd)
	want := extend(extend(make([]byte, 32), predict.LoadOptionsDigest(cmdline+" initrd=initrd")), initrdSum[:])
	if got := predict.KernelBootPCR9(cmdline, initrd); !bytes.Equal(got, want) {
		t.Errorf("KernelBootPCR9 = %x, want %x", got, want)
	}
	for _, e := range predict.KernelBootEvents(cmdline, initrd) {
		if e.PCR != predict.PCRKernelStub {
			t.Errorf("event %q in PCR %d, want 9", e.Description, e.PCR)
		}
	}
	if bytes.Equal(predict.KernelBootPCR9(cmdline+" ", initrd), want) {
		t.Error("a different command line predicts the same PCR 9")
	}
}
