package storage

// SetNonceReserve shrinks the nonce reservation so tests reach the
// reservation-exhausted path; it returns a function restoring the default.
func SetNonceReserve(n uint64) (restore func()) {
	old := nonceReserve
	nonceReserve = n
	return func() { nonceReserve = old }
}

// ParallelBlocks is parallelBlocks, for the GCM ceiling benchmark to
// spread its work over cores exactly as the store does.
var ParallelBlocks = parallelBlocks

// ParallelMin is parallelMin.
const ParallelMin = parallelMin
