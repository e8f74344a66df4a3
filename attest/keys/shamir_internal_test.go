package keys

import "testing"

// slowMul is GF(2^8) multiplication by the textbook definition: carry-less
// multiplication of the two polynomials, then reduction by 0x11b.
func slowMul(a, b byte) byte {
	var p uint16
	for i := range 8 {
		if b>>i&1 == 1 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p>>i&1 == 1 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

func TestFieldArithmetic(t *testing.T) {
	for a := range 256 {
		for b := range 256 {
			if got, want := gfMul(byte(a), byte(b)), slowMul(byte(a), byte(b)); got != want {
				t.Fatalf("%#x * %#x = %#x, want %#x", a, b, got, want)
			}
		}
		if a == 0 {
			if gfInv(0) != 0 {
				t.Fatalf("inverse of 0 = %#x", gfInv(0))
			}
			continue
		}
		if p := gfMul(byte(a), gfInv(byte(a))); p != 1 {
			t.Fatalf("%#x * inverse %#x = %#x", a, gfInv(byte(a)), p)
		}
	}
	// AES's field: {57} * {83} = {c1} (FIPS 197, 4.2).
	if got := gfMul(0x57, 0x83); got != 0xc1 {
		t.Fatalf("{57}*{83} = %#x, want 0xc1", got)
	}
}

func TestForEachSubset(t *testing.T) {
	for n := 1; n <= 6; n++ {
		for k := 1; k <= n; k++ {
			seen := map[[6]int]bool{}
			forEachSubset(n, k, func(p []int) bool {
				var key [6]int
				for i := range key {
					key[i] = -1
				}
				for i, v := range p {
					if v < 0 || v >= n || (i > 0 && v <= p[i-1]) {
						t.Fatalf("n=%d k=%d: bad subset %v", n, k, p)
					}
					key[i] = v
				}
				seen[key] = true
				return true
			})
			if want := binomial(n, k); len(seen) != want {
				t.Errorf("n=%d k=%d: %d subsets, want %d", n, k, len(seen), want)
			}
		}
	}
}

func binomial(n, k int) int {
	r := 1
	for i := range k {
		r = r * (n - i) / (i + 1)
	}
	return r
}

// TestKMinusOneSharesLeaveEverySecret: k-1 shares say nothing about the
// secret. With the k-1 known points fixed, each of the 256 values of the
// unknown k-th share's byte interpolates to a different secret byte, so
// every secret byte stays equally possible.
func TestKMinusOneSharesLeaveEverySecret(t *testing.T) {
	for _, known := range [][]byte{{1}, {1, 2}, {3, 5, 9}} {
		xs := append(append([]byte(nil), known...), byte(len(known)+10))
		ys := make([][]byte, len(xs))
		for i := range known {
			ys[i] = []byte{byte(0x37 * (i + 1))}
		}
		secrets := map[byte]bool{}
		for g := range 256 {
			ys[len(known)] = []byte{byte(g)}
			secrets[interpolateAtZero(xs, ys)[0]] = true
		}
		if len(secrets) != 256 {
			t.Errorf("%d known shares: only %d of 256 secret bytes possible", len(known), len(secrets))
		}
	}
}

// TestInterpolationRecoversPolynomial: the value at 0 of the polynomial
// through k of its points is its constant term.
func TestInterpolationRecoversPolynomial(t *testing.T) {
	coeffs := []byte{0xa7, 0x11, 0xfe, 0x02}
	xs := []byte{9, 200, 1, 77}
	ys := make([][]byte, len(xs))
	for i, x := range xs {
		ys[i] = []byte{evalPoly(coeffs, x)}
	}
	if got := interpolateAtZero(xs, ys)[0]; got != coeffs[0] {
		t.Fatalf("f(0) = %#x, want %#x", got, coeffs[0])
	}
}
