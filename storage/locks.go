package storage

// lockStripes is the number of per-block lock stripes.
const lockStripes = 1024

// stripeRanges returns the stripe index ranges of blocks [b0, b1) (at most
// maxChunk) in ascending order, so concurrent multi-block operations lock
// in one global order and cannot deadlock.
func stripeRanges(b0, b1 uint64) [2][2]int {
	first := int(b0 % lockStripes)
	n := int(b1 - b0)
	if first+n <= lockStripes {
		return [2][2]int{{first, first + n}, {}}
	}
	return [2][2]int{{0, first + n - lockStripes}, {first, lockStripes}}
}

// lockRange takes the stripe locks of blocks [b0, b1).
func (s *Store) lockRange(b0, b1 uint64, write bool) {
	for _, r := range stripeRanges(b0, b1) {
		for i := r[0]; i < r[1]; i++ {
			if write {
				s.stripes[i].Lock()
			} else {
				s.stripes[i].RLock()
			}
		}
	}
}

// unlockRange releases what lockRange took.
func (s *Store) unlockRange(b0, b1 uint64, write bool) {
	for _, r := range stripeRanges(b0, b1) {
		for i := r[0]; i < r[1]; i++ {
			if write {
				s.stripes[i].Unlock()
			} else {
				s.stripes[i].RUnlock()
			}
		}
	}
}
