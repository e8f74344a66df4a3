package keys_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dataembassy/embassy/attest/keys"
)

func deal(t *testing.T, id string, k, n int) []*keys.Share {
	t.Helper()
	shares, err := keys.Deal(id, k, n)
	if err != nil {
		t.Fatalf("Deal(%d of %d): %v", k, n, err)
	}
	return shares
}

// TestDealCombineEverySubset: for each (k, n), every k-subset of the shares
// recovers the same secret, and every (k-1)-subset is refused.
func TestDealCombineEverySubset(t *testing.T) {
	for _, c := range []struct{ k, n int }{{1, 1}, {1, 3}, {2, 3}, {3, 3}, {2, 5}, {3, 5}, {5, 7}} {
		shares := deal(t, "rack1", c.k, c.n)
		var want []byte
		for mask := 1; mask < 1<<c.n; mask++ {
			var sub []*keys.Share
			for i := range c.n {
				if mask>>i&1 == 1 {
					sub = append(sub, shares[i])
				}
			}
			r, err := keys.Combine("rack1", sub)
			if len(sub) < c.k {
				if !errors.Is(err, keys.ErrTooFewShares) {
					t.Fatalf("%d of %d: %d shares: %v, want ErrTooFewShares", c.k, c.n, len(sub), err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%d of %d: subset %b: %v", c.k, c.n, mask, err)
			}
			if r.Threshold != c.k || r.Total != c.n || r.Set != shares[0].Set || len(r.Secret) != keys.ShareSize {
				t.Fatalf("remote %+v", r)
			}
			if want == nil {
				want = r.Secret
			} else if !bytes.Equal(r.Secret, want) {
				t.Fatalf("%d of %d: subset %b recovers another secret", c.k, c.n, mask)
			}
		}
	}
}

// TestDealsDiffer: two dealings for the same appliance share nothing.
func TestDealsDiffer(t *testing.T) {
	a, b := deal(t, "rack1", 2, 3), deal(t, "rack1", 2, 3)
	if a[0].Set == b[0].Set || bytes.Equal(a[0].Value, b[0].Value) || a[0].Commit == b[0].Commit {
		t.Fatal("two dealings repeat a set id, a share or a commitment")
	}
}

// TestCombineRefuses covers the shares Combine must not combine.
func TestCombineRefuses(t *testing.T) {
	shares := deal(t, "rack1", 2, 3)
	other := deal(t, "rack1", 2, 3)   // an earlier provisioning of the same appliance
	foreign := deal(t, "rack2", 2, 3) // another appliance
	flipped := *shares[1]
	flipped.Value = bytes.Clone(shares[1].Value)
	flipped.Value[7] ^= 1
	for _, c := range []struct {
		name   string
		id     string
		shares []*keys.Share
		want   error
	}{
		{"none", "rack1", nil, keys.ErrTooFewShares},
		{"k-1", "rack1", shares[:1], keys.ErrTooFewShares},
		{"same share twice", "rack1", []*keys.Share{shares[0], shares[0]}, keys.ErrTooFewShares},
		{"two dealings", "rack1", []*keys.Share{shares[0], other[1]}, keys.ErrShareMismatch},
		{"index twice, different values", "rack1", []*keys.Share{shares[1], &flipped, shares[0]}, keys.ErrShareMismatch},
		{"flipped share", "rack1", []*keys.Share{shares[0], &flipped}, keys.ErrShareCommit},
		{"other appliance's shares", "rack1", foreign[:2], keys.ErrShareCommit},
		{"shares for another appliance id", "rack2", shares[:2], keys.ErrShareCommit},
	} {
		if _, err := keys.Combine(c.id, c.shares); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// TestCombineSkipsAWrongShare: with k+1 shares one of which is wrong,
// Combine still finds the k good ones.
func TestCombineSkipsAWrongShare(t *testing.T) {
	shares := deal(t, "rack1", 2, 3)
	good, err := keys.Combine("rack1", shares[1:])
	if err != nil {
		t.Fatal(err)
	}
	bad := *shares[0]
	bad.Value = bytes.Repeat([]byte{0xaa}, keys.ShareSize)
	got, err := keys.Combine("rack1", []*keys.Share{&bad, shares[1], shares[2]})
	if err != nil || !bytes.Equal(got.Secret, good.Secret) {
		t.Fatalf("with one wrong share: %v", err)
	}
	// A wrong share with a commitment of its own cannot vouch for itself.
	bad.Commit[0] ^= 1
	if _, err := keys.Combine("rack1", []*keys.Share{&bad, shares[1]}); !errors.Is(err, keys.ErrShareCommit) {
		t.Fatalf("share with its own commitment: %v", err)
	}
}

// TestKMinusOneSharesCannotGuess: holding k-1 shares, every wrong guess of
// the missing share fails the commitment (that every secret stays possible
// is TestKMinusOneSharesLeaveEverySecret, inside the package).
func TestKMinusOneSharesCannotGuess(t *testing.T) {
	shares := deal(t, "rack1", 2, 3)
	real, err := keys.Combine("rack1", shares[:2])
	if err != nil {
		t.Fatal(err)
	}
	for g := range 256 {
		guess := *shares[1]
		guess.Value = bytes.Clone(shares[1].Value)
		guess.Value[0] = byte(g)
		r, err := keys.Combine("rack1", []*keys.Share{shares[0], &guess})
		if byte(g) == shares[1].Value[0] {
			if err != nil || !bytes.Equal(r.Secret, real.Secret) {
				t.Fatalf("the right guess: %v", err)
			}
			continue
		}
		if !errors.Is(err, keys.ErrShareCommit) {
			t.Fatalf("guess %#x: %v, want ErrShareCommit", g, err)
		}
	}
}

func TestShareEncoding(t *testing.T) {
	s := deal(t, "rack1", 3, 5)[4]
	b, err := s.MarshalBinary()
	if err != nil || len(b) != keys.ShareSize1 {
		t.Fatalf("MarshalBinary: %d bytes, %v", len(b), err)
	}
	got, err := keys.ParseShare(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Set != s.Set || got.Threshold != 3 || got.Total != 5 || got.Index != 5 || !bytes.Equal(got.Value, s.Value) || got.Commit != s.Commit {
		t.Fatalf("round trip: %+v, want %+v", got, s)
	}
	mutate := func(f func([]byte) []byte) []byte { return f(bytes.Clone(b)) }
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"short":     b[:83],
		"long":      append(bytes.Clone(b), 0),
		"version 2": mutate(func(c []byte) []byte { c[0] = 2; return c }),
		"k 0":       mutate(func(c []byte) []byte { c[17] = 0; return c }),
		"k > n":     mutate(func(c []byte) []byte { c[17] = 6; return c }),
		"n 17":      mutate(func(c []byte) []byte { c[17], c[18] = 3, 17; return c }),
		"index 0":   mutate(func(c []byte) []byte { c[19] = 0; return c }),
		"index > n": mutate(func(c []byte) []byte { c[19] = 6; return c }),
	} {
		if _, err := keys.ParseShare(bad); !errors.Is(err, keys.ErrShareFormat) {
			t.Errorf("%s: %v, want ErrShareFormat", name, err)
		}
	}
}

func TestDealRefuses(t *testing.T) {
	for _, c := range []struct {
		id   string
		k, n int
	}{{"rack1", 0, 3}, {"rack1", 4, 3}, {"rack1", 1, 0}, {"rack1", 2, keys.MaxShares + 1}, {"", 1, 1}} {
		if _, err := keys.Deal(c.id, c.k, c.n); err == nil {
			t.Errorf("Deal(%q, %d, %d) accepted", c.id, c.k, c.n)
		}
	}
}

// FuzzParseShare: any input either fails with ErrShareFormat or parses to a
// share that encodes back to the same bytes.
func FuzzParseShare(f *testing.F) {
	shares, err := keys.Deal("rack1", 2, 3)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range shares {
		b, _ := s.MarshalBinary()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := keys.ParseShare(b)
		if err != nil {
			if !errors.Is(err, keys.ErrShareFormat) {
				t.Fatalf("error %v is not ErrShareFormat", err)
			}
			return
		}
		again, err := s.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encode: %v, equal %v", err, bytes.Equal(again, b))
		}
	})
}
