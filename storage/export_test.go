package storage

// SetNonceReserve shrinks the nonce reservation so tests reach the
// reservation-exhausted path; it returns a function restoring the default.
func SetNonceReserve(n uint64) (restore func()) {
	old := nonceReserve
	nonceReserve = n
	return func() { nonceReserve = old }
}
