package storage

// Cache loads the metadata covering [off, off+length) into the cache
// (authenticating it), so later reads of the range need no metadata I/O.
// It stops early once the range's leaves would fill half the cache.
func (s *Store) Cache(off, length int64) error {
	if err := s.checkRange(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	first := uint64(off/BlockSize) / leafEntries
	last := uint64((off+length-1)/BlockSize) / leafEntries
	limit := uint64(s.cache.capacity / 2)
	for li, n := first, uint64(0); li <= last && n < limit; n++ {
		skip, err := s.cacheLeaf(li)
		if err != nil {
			return err
		}
		li += max(skip, 1)
	}
	return nil
}

func (s *Store) cacheLeaf(li uint64) (uint64, error) {
	if err := s.lockShared(false); err != nil {
		return 0, err
	}
	defer s.unlockShared(false)
	if skip, err := s.absentLeaves(li); err != nil || skip > 0 {
		return skip, err
	}
	_, err := s.getNode(0, li)
	return 1, err
}
