// Package release defines Embassy's release manifests: the signed statement
// of what a released boot image contains and which PCR values (SHA-256 bank)
// a machine booting it will have.
//
// A manifest travels in an Envelope: the manifest's JSON encoding carried as
// exact bytes (base64 in the envelope's JSON) plus detached Ed25519
// signatures over those bytes. Verifiers check signatures over the payload
// bytes as received and decode the manifest only afterwards, so no
// canonicalisation is involved. Verify accepts an envelope only when at least
// k distinct trusted keys signed it.
//
// The format is documented in docs/release-manifest.md.
package release

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Version is the manifest format version this package writes and accepts.
const Version = 1

// EnvelopeVersion is the envelope format version this package writes and
// accepts.
const EnvelopeVersion = 1

// Limits on decoded input, so a hostile file cannot exhaust memory.
const (
	maxPayload     = 1 << 20
	maxSignatures  = 64
	maxComponents  = 1024
	maxNameLen     = 256
	maxPCRIndex    = 23
	signatureLabel = "embassy release manifest v1\x00"
)

var (
	// ErrThreshold reports that fewer distinct trusted keys than required
	// signed the envelope.
	ErrThreshold = errors.New("release: not enough valid signatures from trusted keys")
	// ErrFormat reports a malformed envelope or manifest.
	ErrFormat = errors.New("release: malformed manifest")
)

// Component is one file of a released image.
type Component struct {
	// Name identifies the component, e.g. "kernel", "initrd", "uki".
	Name string `json:"name"`
	// SHA256 is the lowercase hex SHA-256 of the component's bytes.
	SHA256 string `json:"sha256"`
	// Size is the component's length in bytes.
	Size int64 `json:"size"`
}

// Manifest describes one release of the appliance's boot image.
type Manifest struct {
	// Version is the manifest format version; Version for this package.
	Version int `json:"version"`
	// Name names the product line, e.g. "embassy-appliance".
	Name string `json:"name"`
	// Release is the release's version string, e.g. "2026.11.1".
	Release string `json:"release"`
	// Created is when the manifest was made (UTC).
	Created time.Time `json:"created"`
	// Components lists the image's files.
	Components []Component `json:"components"`
	// PCRs maps a PCR index (decimal string, "0".."23") to its expected
	// SHA-256 bank value as lowercase hex (64 characters). Only the PCRs
	// that depend on the release appear (e.g. 4, 9 and 15 for a -kernel
	// boot; 4, 11 and 12 for a UKI boot).
	PCRs map[string]string `json:"pcrs"`
}

// Signature is one detached signature in an Envelope.
type Signature struct {
	// KeyID is the signing key's ID (see KeyID).
	KeyID string `json:"key_id"`
	// Sig is the Ed25519 signature over the signing input (see Sign).
	Sig []byte `json:"sig"`
}

// Envelope carries a manifest's exact payload bytes and its signatures.
type Envelope struct {
	// Version is the envelope format version; EnvelopeVersion.
	Version int `json:"version"`
	// Payload is the manifest's JSON encoding, exactly as signed.
	Payload []byte `json:"payload"`
	// Signatures are detached signatures over Payload.
	Signatures []Signature `json:"signatures"`
}

// KeyID returns the ID of a release public key: the first 16 hex characters
// of the SHA-256 of the raw 32-byte key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// PCRValues returns the manifest's PCRs keyed by index, decoded.
func (m *Manifest) PCRValues() (map[uint32][]byte, error) {
	out := make(map[uint32][]byte, len(m.PCRs))
	for k, v := range m.PCRs {
		idx, err := strconv.ParseUint(k, 10, 32)
		if err != nil || idx > maxPCRIndex || strconv.FormatUint(idx, 10) != k {
			return nil, fmt.Errorf("%w: PCR index %q", ErrFormat, k)
		}
		d, err := hex.DecodeString(v)
		if err != nil || len(d) != sha256.Size || hex.EncodeToString(d) != v {
			return nil, fmt.Errorf("%w: PCR %s value %q is not 64 lowercase hex digits", ErrFormat, k, v)
		}
		out[uint32(idx)] = d
	}
	return out, nil
}

// SetPCR records an expected SHA-256 PCR value.
func (m *Manifest) SetPCR(index uint32, value []byte) {
	if m.PCRs == nil {
		m.PCRs = map[string]string{}
	}
	m.PCRs[strconv.FormatUint(uint64(index), 10)] = hex.EncodeToString(value)
}

// Validate checks the manifest's fields.
func (m *Manifest) Validate() error {
	if m.Version != Version {
		return fmt.Errorf("%w: version %d, want %d", ErrFormat, m.Version, Version)
	}
	if m.Name == "" || len(m.Name) > maxNameLen || m.Release == "" || len(m.Release) > maxNameLen {
		return fmt.Errorf("%w: name and release must be 1..%d bytes", ErrFormat, maxNameLen)
	}
	if m.Created.IsZero() {
		return fmt.Errorf("%w: created time missing", ErrFormat)
	}
	if len(m.Components) > maxComponents {
		return fmt.Errorf("%w: %d components", ErrFormat, len(m.Components))
	}
	seen := map[string]bool{}
	for _, c := range m.Components {
		if c.Name == "" || len(c.Name) > maxNameLen || seen[c.Name] {
			return fmt.Errorf("%w: component name %q empty, too long or repeated", ErrFormat, c.Name)
		}
		seen[c.Name] = true
		d, err := hex.DecodeString(c.SHA256)
		if err != nil || len(d) != sha256.Size || hex.EncodeToString(d) != c.SHA256 {
			return fmt.Errorf("%w: component %q sha256 is not 64 lowercase hex digits", ErrFormat, c.Name)
		}
		if c.Size < 0 {
			return fmt.Errorf("%w: component %q has negative size", ErrFormat, c.Name)
		}
	}
	if len(m.PCRs) == 0 {
		return fmt.Errorf("%w: no PCR values", ErrFormat)
	}
	_, err := m.PCRValues()
	return err
}

// Marshal validates m and returns its payload bytes.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(m, "", "  ")
}

// ParseManifest decodes and validates payload bytes. Unknown fields are
// refused so a manifest cannot carry claims this verifier ignores.
func ParseManifest(payload []byte) (*Manifest, error) {
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes", ErrFormat, len(payload))
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrFormat)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// signingInput is what a signature covers: a domain label, then the payload.
func signingInput(payload []byte) []byte {
	return append([]byte(signatureLabel), payload...)
}

// NewEnvelope wraps a manifest's payload bytes in an unsigned envelope.
func NewEnvelope(m *Manifest) (*Envelope, error) {
	p, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	return &Envelope{Version: EnvelopeVersion, Payload: p}, nil
}

// Sign adds priv's signature over the payload. Signing twice with one key
// replaces the earlier signature.
func (e *Envelope) Sign(priv ed25519.PrivateKey) {
	pub := priv.Public().(ed25519.PublicKey)
	id := KeyID(pub)
	sig := ed25519.Sign(priv, signingInput(e.Payload))
	for i := range e.Signatures {
		if e.Signatures[i].KeyID == id {
			e.Signatures[i].Sig = sig
			return
		}
	}
	e.Signatures = append(e.Signatures, Signature{KeyID: id, Sig: sig})
}

// ParseEnvelope decodes an envelope's JSON without verifying it.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if len(data) > 2*maxPayload {
		return nil, fmt.Errorf("%w: envelope of %d bytes", ErrFormat, len(data))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var e Envelope
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrFormat)
	}
	if e.Version != EnvelopeVersion {
		return nil, fmt.Errorf("%w: envelope version %d, want %d", ErrFormat, e.Version, EnvelopeVersion)
	}
	if len(e.Payload) == 0 || len(e.Payload) > maxPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes", ErrFormat, len(e.Payload))
	}
	if len(e.Signatures) > maxSignatures {
		return nil, fmt.Errorf("%w: %d signatures", ErrFormat, len(e.Signatures))
	}
	return &e, nil
}

// Marshal returns the envelope's JSON encoding.
func (e *Envelope) Marshal() ([]byte, error) {
	return json.MarshalIndent(e, "", "  ")
}

// Verified is the result of a successful Verify.
type Verified struct {
	// Manifest is the decoded, validated manifest.
	Manifest *Manifest
	// SignedBy lists the IDs of the distinct trusted keys whose signature
	// verified, sorted.
	SignedBy []string
	// Digest is the SHA-256 of the payload bytes: the release's identity.
	Digest [32]byte
}

// Verify checks e's signatures against trusted keys and returns the manifest
// when at least threshold distinct trusted keys signed it. Signatures by
// unknown keys or that fail to verify are ignored (they count for nothing).
// A threshold below 1 is refused.
func (e *Envelope) Verify(trusted []ed25519.PublicKey, threshold int) (*Verified, error) {
	if threshold < 1 {
		return nil, fmt.Errorf("release: threshold %d: must be at least 1", threshold)
	}
	keys := make(map[string]ed25519.PublicKey, len(trusted))
	for _, k := range trusted {
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("release: trusted key of %d bytes", len(k))
		}
		keys[KeyID(k)] = k
	}
	input := signingInput(e.Payload)
	valid := map[string]bool{}
	for _, s := range e.Signatures {
		k, ok := keys[s.KeyID]
		if !ok || valid[s.KeyID] {
			continue
		}
		if len(s.Sig) == ed25519.SignatureSize && ed25519.Verify(k, input, s.Sig) {
			valid[s.KeyID] = true
		}
	}
	if len(valid) < threshold {
		return nil, fmt.Errorf("%w: %d valid of %d required", ErrThreshold, len(valid), threshold)
	}
	m, err := ParseManifest(e.Payload)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(valid))
	for id := range valid {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return &Verified{Manifest: m, SignedBy: ids, Digest: sha256.Sum256(e.Payload)}, nil
}

// Key file formats: one line, "embassy-release-pub ed25519 <base64>" for a
// public key and "embassy-release-priv ed25519 <base64 seed>" for a private
// key, so a key's kind is visible and a private key is never mistaken for a
// public one.
const (
	pubPrefix  = "embassy-release-pub ed25519 "
	privPrefix = "embassy-release-priv ed25519 "
)

// MarshalPublicKey encodes a release public key in the key file format.
func MarshalPublicKey(pub ed25519.PublicKey) []byte {
	return []byte(pubPrefix + b64(pub) + "\n")
}

// MarshalPrivateKey encodes a release private key (its seed) in the key file
// format.
func MarshalPrivateKey(priv ed25519.PrivateKey) []byte {
	return []byte(privPrefix + b64(priv.Seed()) + "\n")
}

// ParsePublicKey decodes a public key file.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	raw, err := parseKeyLine(data, pubPrefix, ed25519.PublicKeySize)
	if err != nil {
		return nil, err
	}
	return ed25519.PublicKey(raw), nil
}

// ParsePrivateKey decodes a private key file.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	raw, err := parseKeyLine(data, privPrefix, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(raw), nil
}

func parseKeyLine(data []byte, prefix string, size int) ([]byte, error) {
	s := strings.TrimSpace(string(data))
	if !strings.HasPrefix(s, prefix) {
		return nil, fmt.Errorf("release: key file does not start with %q", strings.TrimSpace(prefix))
	}
	raw, err := unb64(strings.TrimPrefix(s, prefix))
	if err != nil || len(raw) != size {
		return nil, fmt.Errorf("release: key file: bad key encoding")
	}
	return raw, nil
}
