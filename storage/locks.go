package storage

// Lock order: flushMu, writeMu, commitMu (see Store), then the stripe locks
// of the blocks concerned in ascending stripe order.

// lockStripes is the number of per-block lock stripes.
const lockStripes = 1024

// lockExclusive takes what a commit needs: flushMu, writeMu and commitMu,
// all exclusively, in lock order.
func (s *Store) lockExclusive() {
	s.flushMu.Lock()
	s.writeMu.Lock()
	s.commitMu.Lock()
}

// unlockExclusive releases what lockExclusive took.
func (s *Store) unlockExclusive() {
	s.commitMu.Unlock()
	s.writeMu.Unlock()
	s.flushMu.Unlock()
}

// lockShared takes what an I/O operation holds for its whole length:
// writeMu shared if it changes data or metadata (write), then commitMu
// shared. It fails, holding nothing, if the store cannot serve the
// operation (see usableLocked); otherwise unlockShared(write) releases.
func (s *Store) lockShared(write bool) error {
	if write {
		s.writeMu.RLock()
	}
	s.commitMu.RLock()
	if err := s.usableLocked(write); err != nil {
		s.unlockShared(write)
		return err
	}
	return nil
}

// unlockShared releases what lockShared(write) took.
func (s *Store) unlockShared(write bool) {
	s.commitMu.RUnlock()
	if write {
		s.writeMu.RUnlock()
	}
}

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
func (s *Store) lockRange(b0, b1 uint64, write bool) { s.stripeLocks(b0, b1, write, true) }

// unlockRange releases what lockRange took.
func (s *Store) unlockRange(b0, b1 uint64, write bool) { s.stripeLocks(b0, b1, write, false) }

// stripeLocks takes (lock) or releases the stripe locks of blocks [b0, b1),
// exclusive ones with write, shared ones without.
func (s *Store) stripeLocks(b0, b1 uint64, write, lock bool) {
	for _, r := range stripeRanges(b0, b1) {
		for i := r[0]; i < r[1]; i++ {
			m := &s.stripes[i]
			switch {
			case write && lock:
				m.Lock()
			case write:
				m.Unlock()
			case lock:
				m.RLock()
			default:
				m.RUnlock()
			}
		}
	}
}
