package keys_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
)

func TestDeriveKEK(t *testing.T) {
	l, r := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	k, err := keys.DeriveKEK(l, r, "rack1")
	if err != nil || len(k) != 32 {
		t.Fatalf("DeriveKEK: %x %v", k, err)
	}
	again, _ := keys.DeriveKEK(l, r, "rack1")
	if !bytes.Equal(k, again) {
		t.Fatal("not deterministic")
	}
	for name, args := range map[string][3]any{
		"other id":     {l, r, "rack2"},
		"other local":  {r, r, "rack1"},
		"other remote": {l, l, "rack1"},
		"swapped":      {r, l, "rack1"},
	} {
		o, err := keys.DeriveKEK(args[0].([]byte), args[1].([]byte), args[2].(string))
		if err != nil || bytes.Equal(o, k) {
			t.Errorf("%s: same KEK (%v)", name, err)
		}
	}
	if _, err := keys.DeriveKEK(l[:31], r, "rack1"); err == nil {
		t.Error("short share accepted")
	}
	if _, err := keys.DeriveKEK(l, r, ""); err == nil {
		t.Error("empty id accepted")
	}
}

func TestSealUnsealBoundToPCRs(t *testing.T) {
	sw := swtpmtest.Start(t)
	rw := sw.RW()
	share, err := keys.NewShare()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := keys.SealLocal(rw, share, []int{7, tpm.PCRPhase, tpm.PCRAppliance})
	if err != nil {
		t.Fatal(err)
	}
	got, err := keys.UnsealLocal(rw, blob)
	if err != nil || !bytes.Equal(got, share) {
		t.Fatalf("unseal: %v", err)
	}
	if err := tpm.Extend(rw, tpm.PCRAppliance, bytes.Repeat([]byte{9}, 32)); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.UnsealLocal(rw, blob); !errors.Is(err, keys.ErrUnseal) {
		t.Fatalf("unsealed after PCR 15 changed: %v", err)
	}
	if _, err := keys.UnsealLocal(rw, []byte("junk")); err == nil || errors.Is(err, keys.ErrUnseal) {
		t.Fatalf("junk blob: %v", err)
	}
}
