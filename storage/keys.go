package storage

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
)

// KEKSize is the size of a key-encryption key in bytes (AES-256).
const KEKSize = 32

// ErrKey reports that no key slot of the store opens with the key given:
// a wrong KEK, the wrong recovery key, or no store at all.
var ErrKey = errors.New("storage: no key slot opens with the given key")

// Recovery keys use HPKE (RFC 9180) with the hybrid post-quantum KEM
// ML-KEM-768 + X25519, HKDF-SHA256 and AES-256-GCM: disks shipped home may
// be read decades later.
var (
	recoveryKEM  = hpke.MLKEM768X25519()
	recoveryKDF  = hpke.HKDFSHA256()
	recoveryAEAD = hpke.AES256GCM()
)

// PEM block types of the recovery key files.
const (
	pemRecoveryPublic  = "EMBASSY STORE RECOVERY PUBLIC KEY"
	pemRecoveryPrivate = "EMBASSY STORE RECOVERY PRIVATE KEY"
)

// GenerateRecoveryKey returns a new recovery key pair.
func GenerateRecoveryKey() (hpke.PrivateKey, error) {
	return recoveryKEM.GenerateKey()
}

// MarshalRecoveryPublicKey returns the PEM encoding of a recovery public key.
func MarshalRecoveryPublicKey(pk hpke.PublicKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemRecoveryPublic, Bytes: pk.Bytes()})
}

// MarshalRecoveryPrivateKey returns the PEM encoding of a recovery private key.
func MarshalRecoveryPrivateKey(sk hpke.PrivateKey) ([]byte, error) {
	b, err := sk.Bytes()
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemRecoveryPrivate, Bytes: b}), nil
}

// ParseRecoveryPublicKey parses a PEM recovery public key.
func ParseRecoveryPublicKey(data []byte) (hpke.PublicKey, error) {
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != pemRecoveryPublic {
		return nil, fmt.Errorf("storage: no %q PEM block", pemRecoveryPublic)
	}
	return recoveryKEM.NewPublicKey(blk.Bytes)
}

// ParseRecoveryPrivateKey parses a PEM recovery private key.
func ParseRecoveryPrivateKey(data []byte) (hpke.PrivateKey, error) {
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != pemRecoveryPrivate {
		return nil, fmt.Errorf("storage: no %q PEM block", pemRecoveryPrivate)
	}
	return recoveryKEM.NewPrivateKey(blk.Bytes)
}

func kekAAD(uuid [16]byte) []byte {
	return append([]byte("embassy-store v1 kek slot"), uuid[:]...)
}

func recoveryInfo(uuid [16]byte) []byte {
	return append([]byte("embassy-store v1 recovery"), uuid[:]...)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func wrapKEK(kek, dek []byte, uuid [16]byte) (kekSlot, error) {
	var s kekSlot
	if len(kek) != KEKSize {
		return s, fmt.Errorf("storage: KEK must be %d bytes, got %d", KEKSize, len(kek))
	}
	a, err := newGCM(kek)
	if err != nil {
		return s, err
	}
	if _, err := rand.Read(s.nonce[:]); err != nil {
		return s, err
	}
	copy(s.ct[:], a.Seal(nil, s.nonce[:], dek, kekAAD(uuid)))
	s.present = true
	return s, nil
}

func unwrapKEK(kek []byte, s *kekSlot, uuid [16]byte) ([]byte, error) {
	if !s.present {
		return nil, ErrKey
	}
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("storage: KEK must be %d bytes, got %d", KEKSize, len(kek))
	}
	a, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	dek, err := a.Open(nil, s.nonce[:], s.ct[:], kekAAD(uuid))
	if err != nil {
		return nil, ErrKey
	}
	return dek, nil
}

func wrapRecovery(pk hpke.PublicKey, dek []byte, uuid [16]byte) (recoverySlot, error) {
	var r recoverySlot
	enc, sender, err := hpke.NewSender(pk, recoveryKDF, recoveryAEAD, recoveryInfo(uuid))
	if err != nil {
		return r, err
	}
	ct, err := sender.Seal(nil, dek)
	if err != nil {
		return r, err
	}
	r.kem, r.kdf, r.aead = pk.KEM().ID(), recoveryKDF.ID(), recoveryAEAD.ID()
	r.enc, r.ct = enc, ct
	return r, nil
}

func unwrapRecovery(sk hpke.PrivateKey, r *recoverySlot, uuid [16]byte) ([]byte, error) {
	if !r.present() || r.kem != sk.KEM().ID() || r.kdf != recoveryKDF.ID() || r.aead != recoveryAEAD.ID() {
		return nil, ErrKey
	}
	rc, err := hpke.NewRecipient(r.enc, sk, recoveryKDF, recoveryAEAD, recoveryInfo(uuid))
	if err != nil {
		return nil, ErrKey
	}
	dek, err := rc.Open(nil, r.ct)
	if err != nil || len(dek) != dataKeyLen {
		return nil, ErrKey
	}
	return dek, nil
}

// storeKeys are the working keys derived from the DEK.
type storeKeys struct {
	data cipher.AEAD
	mac  []byte
}

func deriveKeys(dek []byte, uuid [16]byte) (*storeKeys, error) {
	dk, err := hkdf.Key(sha256.New, dek, uuid[:], "embassy-store v1 data", 32)
	if err != nil {
		return nil, err
	}
	mk, err := hkdf.Key(sha256.New, dek, uuid[:], "embassy-store v1 superblock mac", 32)
	if err != nil {
		return nil, err
	}
	a, err := newGCM(dk)
	if err != nil {
		return nil, err
	}
	return &storeKeys{data: a, mac: mk}, nil
}

func superblockMAC(key, body []byte) [32]byte {
	m := hmac.New(sha256.New, key)
	m.Write(body[:sbMACOffset])
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// Rewrap replaces the KEK key slot with the DEK wrapped under newKEK. No
// data is re-encrypted. Both superblock copies are rewritten, so the old
// KEK no longer opens this device (copies of older images aside). If
// Rewrap fails or power is lost during it, the store opens with the new
// KEK or, failing that (ErrKey), with the old one: call Rewrap again.
func (s *Store) Rewrap(newKEK []byte) error {
	s.lockExclusive()
	defer s.unlockExclusive()
	if err := s.usableLocked(true); err != nil {
		return err
	}
	slot, err := wrapKEK(newKEK, s.dek, s.sb.uuid)
	if err != nil {
		return err
	}
	s.sb.kekSlot = slot
	for i := 0; i < sbCopies; i++ {
		if err := s.commitLocked(true, false); err != nil {
			return err
		}
	}
	return nil
}
