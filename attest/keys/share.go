package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
)

// MaxShares bounds n, the number of verifiers a remote secret is split
// among. Combine searches subsets of the shares it is given, which stays
// small at this size.
const MaxShares = 16

// SetIDSize is the size of a SetID.
const SetIDSize = 16

// ShareSize1 is the encoded size of a share (format version 1).
const ShareSize1 = 84

// shareVersion is the share encoding's format version.
const shareVersion = 1

// SetID identifies one dealing of a remote secret: the shares of one
// provisioning of one appliance. Shares of different sets never combine.
type SetID [SetIDSize]byte

// String returns the set id in hex.
func (s SetID) String() string { return hex.EncodeToString(s[:]) }

// Errors callers act on.
var (
	// ErrShareFormat reports an encoded share that does not parse.
	ErrShareFormat = errors.New("keys: malformed key share")
	// ErrShareMismatch reports shares that cannot belong together: of
	// different sets, thresholds or totals, or repeating an index.
	ErrShareMismatch = errors.New("keys: key shares of different dealings")
	// ErrTooFewShares reports fewer shares than the set's threshold.
	ErrTooFewShares = errors.New("keys: fewer key shares than the threshold")
	// ErrShareCommit reports that no threshold-sized subset of the shares
	// reproduces the secret the set committed to: a wrong share, or a share
	// dealt for another appliance.
	ErrShareCommit = errors.New("keys: key shares do not reproduce the committed secret")
)

// Share is one verifier's share of an appliance's remote secret. Its
// encoding (MarshalBinary, format version 1, docs/attestation.md) is what a
// verifier grants, encrypted to the appliance's EK.
type Share struct {
	// Set identifies the dealing this share belongs to.
	Set SetID
	// Threshold is k: how many shares recover the secret.
	Threshold int
	// Total is n: how many shares were dealt.
	Total int
	// Index is the share's x coordinate, 1..Total.
	Index int
	// Value is the share's 32 bytes (ShareSize).
	Value []byte
	// Commit is SHA-256 over the appliance id, set, k, n and the secret
	// (commitment): Combine checks the recovered secret against it.
	Commit [sha256.Size]byte
}

// Remote is a recovered remote secret with the dealing it came from, which
// the KEK derivation binds.
type Remote struct {
	// Set, Threshold and Total are those of the shares combined.
	Set              SetID
	Threshold, Total int
	// Secret is the remote secret (ShareSize bytes).
	Secret []byte
}

// Zeroize wipes the secret.
func (r *Remote) Zeroize() { clear(r.Secret) }

func (s *Share) check() error {
	switch {
	case s.Total < 1 || s.Total > MaxShares:
		return fmt.Errorf("%w: n = %d, want 1..%d", ErrShareFormat, s.Total, MaxShares)
	case s.Threshold < 1 || s.Threshold > s.Total:
		return fmt.Errorf("%w: k = %d of n = %d", ErrShareFormat, s.Threshold, s.Total)
	case s.Index < 1 || s.Index > s.Total:
		return fmt.Errorf("%w: index %d of n = %d", ErrShareFormat, s.Index, s.Total)
	case len(s.Value) != ShareSize:
		return fmt.Errorf("%w: value of %d bytes", ErrShareFormat, len(s.Value))
	}
	return nil
}

// MarshalBinary encodes the share (format version 1, ShareSize1 bytes):
//
//	0  1  version (1)
//	1  16 set id
//	17 1  k
//	18 1  n
//	19 1  index
//	20 32 value
//	52 32 commitment
func (s *Share) MarshalBinary() ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, ShareSize1)
	b = append(b, shareVersion)
	b = append(b, s.Set[:]...)
	b = append(b, byte(s.Threshold), byte(s.Total), byte(s.Index))
	b = append(b, s.Value...)
	return append(b, s.Commit[:]...), nil
}

// ParseShare decodes a share made by MarshalBinary, refusing any other
// length, version or out-of-range field with ErrShareFormat.
func ParseShare(b []byte) (*Share, error) {
	if len(b) != ShareSize1 {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrShareFormat, len(b), ShareSize1)
	}
	if b[0] != shareVersion {
		return nil, fmt.Errorf("%w: version %d", ErrShareFormat, b[0])
	}
	s := &Share{Threshold: int(b[17]), Total: int(b[18]), Index: int(b[19]), Value: append([]byte(nil), b[20:52]...)}
	copy(s.Set[:], b[1:17])
	copy(s.Commit[:], b[52:84])
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// commitment binds a secret to its appliance and dealing.
func commitment(applianceID string, set SetID, k, n int, secret []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte("embassy remote secret v1\x00"))
	h.Write([]byte{byte(len(applianceID))})
	h.Write([]byte(applianceID))
	h.Write(set[:])
	h.Write([]byte{byte(k), byte(n)})
	h.Write(secret)
	var c [sha256.Size]byte
	h.Sum(c[:0])
	return c
}

// Deal makes a fresh random remote secret for applianceID and splits it
// into n shares of which any k recover it, under a fresh random SetID. The
// secret itself is wiped before Deal returns: only the shares hold it.
// k = n = 1 is a single verifier holding the whole secret.
func Deal(applianceID string, k, n int) ([]*Share, error) {
	if n < 1 || n > MaxShares || k < 1 || k > n {
		return nil, fmt.Errorf("keys: cannot deal %d of %d shares (1 <= k <= n <= %d)", k, n, MaxShares)
	}
	if applianceID == "" || len(applianceID) > 255 {
		return nil, fmt.Errorf("keys: appliance id of %d bytes", len(applianceID))
	}
	var set SetID
	if _, err := rand.Read(set[:]); err != nil {
		return nil, err
	}
	secret, err := NewShare()
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	commit := commitment(applianceID, set, k, n, secret)
	shares := make([]*Share, n)
	for i := range shares {
		shares[i] = &Share{Set: set, Threshold: k, Total: n, Index: i + 1, Value: make([]byte, ShareSize), Commit: commit}
	}
	coeffs := make([]byte, k)
	defer clear(coeffs)
	for pos, s := range secret {
		coeffs[0] = s
		if _, err := rand.Read(coeffs[1:]); err != nil {
			return nil, err
		}
		for _, sh := range shares {
			sh.Value[pos] = evalPoly(coeffs, byte(sh.Index))
		}
	}
	return shares, nil
}

// Combine recovers applianceID's remote secret from shares of one dealing.
// Given more than k shares it uses the first k-subset whose secret matches
// the commitment, so one verifier's wrong share does not stop the others.
// Errors: ErrShareMismatch (different sets, k or n; an index twice with
// different values), ErrTooFewShares, ErrShareCommit.
func Combine(applianceID string, shares []*Share) (*Remote, error) {
	if len(shares) == 0 {
		return nil, fmt.Errorf("%w: none given", ErrTooFewShares)
	}
	first := shares[0]
	byIndex := map[int]*Share{}
	for _, s := range shares {
		if err := s.check(); err != nil {
			return nil, err
		}
		if s.Set != first.Set || s.Threshold != first.Threshold || s.Total != first.Total {
			return nil, fmt.Errorf("%w: set %s (%d of %d) and set %s (%d of %d)", ErrShareMismatch,
				first.Set, first.Threshold, first.Total, s.Set, s.Threshold, s.Total)
		}
		if prev, ok := byIndex[s.Index]; ok {
			if subtle.ConstantTimeCompare(prev.Value, s.Value) != 1 || prev.Commit != s.Commit {
				return nil, fmt.Errorf("%w: two different shares with index %d", ErrShareMismatch, s.Index)
			}
			continue
		}
		byIndex[s.Index] = s
	}
	k := first.Threshold
	if len(byIndex) < k {
		return nil, fmt.Errorf("%w: %d of %d needed (set %s)", ErrTooFewShares, len(byIndex), k, first.Set)
	}
	distinct := make([]*Share, 0, len(byIndex))
	for i := 1; i <= first.Total; i++ {
		if s, ok := byIndex[i]; ok {
			distinct = append(distinct, s)
		}
	}
	var found *Remote
	forEachSubset(len(distinct), k, func(pick []int) bool {
		xs := make([]byte, k)
		ys := make([][]byte, k)
		for j, p := range pick {
			xs[j], ys[j] = byte(distinct[p].Index), distinct[p].Value
		}
		secret := interpolateAtZero(xs, ys)
		// Every share of the subset must carry the commitment the secret
		// matches: a share with its own commitment cannot vouch for others.
		c := commitment(applianceID, first.Set, k, first.Total, secret)
		for _, p := range pick {
			if subtle.ConstantTimeCompare(c[:], distinct[p].Commit[:]) != 1 {
				clear(secret)
				return true
			}
		}
		found = &Remote{Set: first.Set, Threshold: k, Total: first.Total, Secret: secret}
		return false
	})
	if found == nil {
		return nil, fmt.Errorf("%w: no %d of the %d shares of set %s", ErrShareCommit, k, len(distinct), first.Set)
	}
	return found, nil
}

// forEachSubset calls fn with every k-subset of 0..n-1 in lexicographic
// order until fn returns false.
func forEachSubset(n, k int, fn func([]int) bool) {
	pick := make([]int, k)
	for i := range pick {
		pick[i] = i
	}
	for {
		if !fn(pick) {
			return
		}
		i := k - 1
		for i >= 0 && pick[i] == n-k+i {
			i--
		}
		if i < 0 {
			return
		}
		pick[i]++
		for j := i + 1; j < k; j++ {
			pick[j] = pick[j-1] + 1
		}
	}
}
