package tpm_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
	"github.com/dataembassy/embassy/storage"
	"github.com/google/go-tpm-tools/client"
)

var _ storage.Counter = (*tpm.NVCounter)(nil)

func TestNVCounterMonotonicAcrossReboot(t *testing.T) {
	sw := swtpmtest.Start(t)
	rw := sw.RW()
	c, err := tpm.OpenNVCounter(rw, tpm.DefaultCounterIndex)
	if err != nil {
		t.Fatal(err)
	}
	v0, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	v1, err := c.Increment()
	if err != nil {
		t.Fatal(err)
	}
	if v1 != v0+1 {
		t.Fatalf("increment: %d -> %d", v0, v1)
	}
	sw.Reboot()
	c2, err := tpm.OpenNVCounter(sw.RW(), tpm.DefaultCounterIndex)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c2.Read()
	if err != nil {
		t.Fatal(err)
	}
	if got < v1 {
		t.Fatalf("counter went back after reboot: %d < %d", got, v1)
	}
}

func TestOpenNVCounterRefusesOtherIndex(t *testing.T) {
	sw := swtpmtest.Start(t)
	// 0x01c00002 holds swtpm's RSA EK certificate: an ordinary NV index.
	if _, err := tpm.OpenNVCounter(sw.RW(), 0x01c00002); !errors.Is(err, tpm.ErrNotCounter) {
		t.Fatalf("got %v, want ErrNotCounter", err)
	}
}

func TestExtendAndRead(t *testing.T) {
	sw := swtpmtest.Start(t)
	rw := sw.RW()
	d := sha256.Sum256([]byte("event"))
	if err := tpm.Extend(rw, tpm.PCRPhase, d[:]); err != nil {
		t.Fatal(err)
	}
	vals, err := tpm.ReadPCRs(rw, []int{tpm.PCRPhase, tpm.PCRAppliance})
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(vals[tpm.PCRPhase], want[:]) {
		t.Errorf("PCR 14 = %x, want %x", vals[tpm.PCRPhase], want)
	}
	if !bytes.Equal(vals[tpm.PCRAppliance], make([]byte, 32)) {
		t.Errorf("PCR 15 = %x, want zeros", vals[tpm.PCRAppliance])
	}
	if err := tpm.Extend(rw, 14, []byte("short")); err == nil {
		t.Error("short digest accepted")
	}
}

func TestEKCertificateFromSwtpm(t *testing.T) {
	sw := swtpmtest.Start(t)
	ek, err := client.EndorsementKeyRSA(sw.RW())
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	cert := ek.Cert()
	if cert == nil {
		t.Fatal("no EK certificate in NV")
	}
	if err := cert.CheckSignatureFrom(sw.Intermediate); err != nil {
		t.Fatalf("EK cert not issued by the local CA: %v", err)
	}
	type eq interface {
		Equal(crypto.PublicKey) bool
	}
	if !ek.PublicKey().(eq).Equal(cert.PublicKey) {
		t.Fatal("EK certificate's key differs from the EK")
	}
}
