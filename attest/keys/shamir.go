package keys

// Shamir secret sharing over GF(2^8), byte by byte: each byte of the secret
// is the constant term of its own random polynomial of degree k-1, and share
// i holds the polynomials' values at x = i. The field is GF(2^8) with AES's
// reduction polynomial x^8 + x^4 + x^3 + x + 1 (0x11b): shares are exactly as
// long as the secret, there is no bignum arithmetic and no modular bias, and
// 255 possible x coordinates are far more than MaxShares. The arithmetic uses
// no tables and no secret-dependent branches, so it runs in constant time.

// gfMul multiplies a and b in GF(2^8) by shift-and-add with masks.
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= -(b & 1) & a
		carry := -(a >> 7)
		a = a<<1 ^ carry&0x1b
		b >>= 1
	}
	return p
}

// gfInv returns a's multiplicative inverse, a^254 (0 for 0), with a fixed
// sequence of multiplications.
func gfInv(a byte) byte {
	// 254 = 0b11111110: square-and-multiply over its bits, high to low.
	r := byte(1)
	for i := 7; i >= 0; i-- {
		r = gfMul(r, r)
		if (254>>i)&1 == 1 { // branch on the public exponent only
			r = gfMul(r, a)
		}
	}
	return r
}

// evalPoly evaluates coeffs[0] + coeffs[1]x + ... at x (Horner).
func evalPoly(coeffs []byte, x byte) byte {
	var y byte
	for i := len(coeffs) - 1; i >= 0; i-- {
		y = gfMul(y, x) ^ coeffs[i]
	}
	return y
}

// interpolateAtZero returns, for each byte position, the value at x = 0 of
// the polynomial through the points (xs[i], ys[i][pos]). The xs must be
// distinct and non-zero.
func interpolateAtZero(xs []byte, ys [][]byte) []byte {
	out := make([]byte, len(ys[0]))
	for i, xi := range xs {
		// Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i); in GF(2^8)
		// subtraction is xor.
		basis := byte(1)
		for j, xj := range xs {
			if j != i {
				basis = gfMul(basis, gfMul(xj, gfInv(xj^xi)))
			}
		}
		for pos, y := range ys[i] {
			out[pos] ^= gfMul(basis, y)
		}
	}
	return out
}
