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

// DataOffset returns the device offset of block i's current ciphertext,
// or false if the block is unmapped.
func (s *Store) DataOffset(i uint64) (int64, bool, error) {
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	l, err := s.getNode(0, i/leafEntries)
	if err != nil {
		return 0, false, err
	}
	l.mu.RLock()
	e := l.leaf[i%leafEntries]
	l.mu.RUnlock()
	return int64(s.geom.dataBlock(i, e.slot())) * BlockSize, e.mapped(), nil
}

// MappedWindows is how many windows of the device the store has mapped
// for reads (0 without a mapping).
func (s *Store) MappedWindows() int {
	if s.dmap == nil {
		return 0
	}
	s.dmap.mu.Lock()
	defer s.dmap.mu.Unlock()
	return s.dmap.count
}

// MapWindow is the size of one mapping window.
const MapWindow = mapWindow
