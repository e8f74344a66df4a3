package release_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/release"
)

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

func sampleManifest() *release.Manifest {
	m := &release.Manifest{
		Version: release.Version,
		Name:    "embassy-appliance",
		Release: "2026.11.1",
		Created: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC),
		Components: []release.Component{
			{Name: "kernel", SHA256: hexSum("k"), Size: 1},
			{Name: "initrd", SHA256: hexSum("i"), Size: 1},
		},
	}
	s4 := sha256.Sum256([]byte("pcr4"))
	s9 := sha256.Sum256([]byte("pcr9"))
	m.SetPCR(4, s4[:])
	m.SetPCR(9, s9[:])
	return m
}

func hexSum(s string) string {
	m := &release.Manifest{}
	d := sha256.Sum256([]byte(s))
	m.SetPCR(0, d[:])
	return m.PCRs["0"]
}

func TestVerifyThreshold(t *testing.T) {
	a, b, c, outsider := newKey(t), newKey(t), newKey(t), newKey(t)
	trusted := []ed25519.PublicKey{pub(a), pub(b), pub(c)}
	tests := []struct {
		name      string
		signers   []ed25519.PrivateKey
		dupA      bool
		threshold int
		tamper    bool
		wantErr   error
	}{
		{name: "one of one", signers: []ed25519.PrivateKey{a}, threshold: 1},
		{name: "two of three", signers: []ed25519.PrivateKey{a, c}, threshold: 2},
		{name: "one below threshold", signers: []ed25519.PrivateKey{a}, threshold: 2, wantErr: release.ErrThreshold},
		{name: "same key twice counts once", signers: []ed25519.PrivateKey{a}, dupA: true, threshold: 2, wantErr: release.ErrThreshold},
		{name: "untrusted signer counts nothing", signers: []ed25519.PrivateKey{a, outsider}, threshold: 2, wantErr: release.ErrThreshold},
		{name: "tampered payload", signers: []ed25519.PrivateKey{a, b, c}, threshold: 1, tamper: true, wantErr: release.ErrThreshold},
		{name: "unsigned", threshold: 1, wantErr: release.ErrThreshold},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := release.NewEnvelope(sampleManifest())
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.signers {
				env.Sign(k)
			}
			if tt.dupA {
				env.Signatures = append(env.Signatures, env.Signatures[0])
			}
			if tt.tamper {
				env.Payload = bytes.Replace(env.Payload, []byte("2026.11.1"), []byte("2026.11.2"), 1)
			}
			raw, err := env.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			env2, err := release.ParseEnvelope(raw)
			if err != nil {
				t.Fatal(err)
			}
			v, err := env2.Verify(trusted, tt.threshold)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Verify: got %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(v.SignedBy) != len(tt.signers) {
				t.Errorf("SignedBy %v, want %d keys", v.SignedBy, len(tt.signers))
			}
			pcrs, err := v.Manifest.PCRValues()
			if err != nil {
				t.Fatal(err)
			}
			want := sha256.Sum256([]byte("pcr9"))
			if !bytes.Equal(pcrs[9], want[:]) {
				t.Errorf("PCR 9 = %x, want %x", pcrs[9], want)
			}
			if v.Digest != sha256.Sum256(env2.Payload) {
				t.Error("digest is not the payload's SHA-256")
			}
		})
	}
}

func TestVerifyRejectsZeroThreshold(t *testing.T) {
	env, err := release.NewEnvelope(sampleManifest())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Verify(nil, 0); err == nil {
		t.Fatal("threshold 0 accepted")
	}
}

func TestManifestValidation(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*release.Manifest)
	}{
		{"wrong version", func(m *release.Manifest) { m.Version = 2 }},
		{"no name", func(m *release.Manifest) { m.Name = "" }},
		{"no pcrs", func(m *release.Manifest) { m.PCRs = nil }},
		{"pcr index out of range", func(m *release.Manifest) { m.PCRs["24"] = m.PCRs["4"] }},
		{"pcr index not canonical", func(m *release.Manifest) { m.PCRs["04"] = m.PCRs["4"] }},
		{"pcr value short", func(m *release.Manifest) { m.PCRs["4"] = "abcd" }},
		{"pcr value uppercase", func(m *release.Manifest) { m.PCRs["4"] = "AA" + m.PCRs["4"][2:] }},
		{"duplicate component", func(m *release.Manifest) { m.Components[1].Name = "kernel" }},
		{"negative size", func(m *release.Manifest) { m.Components[0].Size = -1 }},
		{"no created", func(m *release.Manifest) { m.Created = time.Time{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sampleManifest()
			tt.mutate(m)
			if _, err := m.Marshal(); !errors.Is(err, release.ErrFormat) {
				t.Fatalf("Marshal: got %v, want ErrFormat", err)
			}
		})
	}
}

func TestParseManifestRejectsUnknownFields(t *testing.T) {
	p, err := sampleManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Replace(p, []byte(`"name"`), []byte(`"extra": 1, "name"`), 1)
	if _, err := release.ParseManifest(bad); !errors.Is(err, release.ErrFormat) {
		t.Fatalf("got %v, want ErrFormat", err)
	}
	if _, err := release.ParseManifest(p); err != nil {
		t.Fatalf("valid manifest refused: %v", err)
	}
}

func TestKeyFiles(t *testing.T) {
	k := newKey(t)
	gotPriv, err := release.ParsePrivateKey(release.MarshalPrivateKey(k))
	if err != nil || !gotPriv.Equal(k) {
		t.Fatalf("private key round trip: %v", err)
	}
	gotPub, err := release.ParsePublicKey(release.MarshalPublicKey(pub(k)))
	if err != nil || !gotPub.Equal(pub(k)) {
		t.Fatalf("public key round trip: %v", err)
	}
	if _, err := release.ParsePublicKey(release.MarshalPrivateKey(k)); err == nil {
		t.Fatal("private key file accepted as public key")
	}
}

// FuzzParseEnvelope checks that arbitrary envelope bytes never panic and
// that nothing verifies without a valid signature by the trusted key.
func FuzzParseEnvelope(f *testing.F) {
	seedKey := ed25519.NewKeyFromSeed(make([]byte, 32))
	env, err := release.NewEnvelope(sampleManifest())
	if err != nil {
		f.Fatal(err)
	}
	env.Sign(seedKey)
	raw, _ := env.Marshal()
	f.Add(raw)
	f.Add([]byte(`{"version":1,"payload":"e30=","signatures":[]}`))
	f.Add([]byte(`{}`))
	trusted := []ed25519.PublicKey{pub(seedKey)}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := release.ParseEnvelope(data)
		if err != nil {
			return
		}
		v, err := e.Verify(trusted, 1)
		if err != nil {
			return
		}
		if !ed25519.Verify(pub(seedKey), append([]byte("embassy release manifest v1\x00"), e.Payload...), findSig(e, release.KeyID(pub(seedKey)))) {
			t.Fatal("verified without a valid signature")
		}
		if err := v.Manifest.Validate(); err != nil {
			t.Fatalf("verified manifest invalid: %v", err)
		}
	})
}

func findSig(e *release.Envelope, id string) []byte {
	for _, s := range e.Signatures {
		if s.KeyID == id && len(s.Sig) == ed25519.SignatureSize {
			return s.Sig
		}
	}
	return nil
}

// FuzzParseManifest checks that arbitrary payloads never panic and that an
// accepted manifest is valid and re-encodes to an accepted manifest.
func FuzzParseManifest(f *testing.F) {
	p, err := sampleManifest().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(p)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"name":"x","release":"1","created":"2026-01-01T00:00:00Z","components":[],"pcrs":{"4":"00"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := release.ParseManifest(data)
		if err != nil {
			return
		}
		again, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted manifest does not re-marshal: %v", err)
		}
		if _, err := release.ParseManifest(again); err != nil {
			t.Fatalf("re-marshalled manifest refused: %v", err)
		}
	})
}
