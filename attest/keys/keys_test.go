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
	l := bytes.Repeat([]byte{1}, 32)
	r := &keys.Remote{Set: keys.SetID{7}, Threshold: 2, Total: 3, Secret: bytes.Repeat([]byte{2}, 32)}
	k, err := keys.DeriveKEK(l, r, "rack1")
	if err != nil || len(k) != 32 {
		t.Fatalf("DeriveKEK: %x %v", k, err)
	}
	again, _ := keys.DeriveKEK(l, r, "rack1")
	if !bytes.Equal(k, again) {
		t.Fatal("not deterministic")
	}
	with := func(f func(*keys.Remote)) *keys.Remote { c := *r; f(&c); return &c }
	for name, c := range map[string]struct {
		local  []byte
		remote *keys.Remote
		id     string
	}{
		"other id":     {l, r, "rack2"},
		"other local":  {r.Secret, r, "rack1"},
		"other secret": {l, with(func(c *keys.Remote) { c.Secret = l }), "rack1"},
		"swapped":      {r.Secret, with(func(c *keys.Remote) { c.Secret = l }), "rack1"},
		"other set":    {l, with(func(c *keys.Remote) { c.Set = keys.SetID{8} }), "rack1"},
		"other k":      {l, with(func(c *keys.Remote) { c.Threshold = 3 }), "rack1"},
		"other n":      {l, with(func(c *keys.Remote) { c.Total = 4 }), "rack1"},
	} {
		o, err := keys.DeriveKEK(c.local, c.remote, c.id)
		if err != nil || bytes.Equal(o, k) {
			t.Errorf("%s: same KEK (%v)", name, err)
		}
	}
	if _, err := keys.DeriveKEK(l[:31], r, "rack1"); err == nil {
		t.Error("short share accepted")
	}
	if _, err := keys.DeriveKEK(l, nil, "rack1"); err == nil {
		t.Error("nil remote accepted")
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
