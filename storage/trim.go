package storage

// Trim discards [off, off+length): whole blocks become holes and partial
// blocks at either end are zeroed, so the whole range reads as zeros. The
// change is durable after the next Flush.
func (s *Store) Trim(off, length int64) error {
	return s.WriteZeroes(off, length)
}

// WriteZeroes makes [off, off+length) read as zeros: whole blocks become
// holes (no data is written), partial blocks are rewritten.
func (s *Store) WriteZeroes(off, length int64) error {
	if err := s.checkRange(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	end := off + length
	b0 := (off + BlockSize - 1) / BlockSize
	b1 := end / BlockSize
	if b0 >= b1 {
		_, err := s.WriteAt(make([]byte, length), off)
		return err
	}
	if head := b0*BlockSize - off; head > 0 {
		if _, err := s.WriteAt(make([]byte, head), off); err != nil {
			return err
		}
	}
	if tail := end - b1*BlockSize; tail > 0 {
		if _, err := s.WriteAt(make([]byte, tail), b1*BlockSize); err != nil {
			return err
		}
	}
	return s.unmap(uint64(b0), uint64(b1))
}

// unmap marks blocks [b0, b1) unmapped, a leaf at a time.
func (s *Store) unmap(b0, b1 uint64) error {
	for li := b0 / leafEntries; li*leafEntries < b1; {
		done, err := s.unmapLeaf(li, b0, b1)
		if _, ok := err.(errCommitting); ok {
			s.waitCommit()
			continue
		}
		if err != nil {
			return err
		}
		li += done
		if err := s.maybeCommit(); err != nil {
			return err
		}
	}
	return nil
}

// unmapLeaf unmaps the blocks of leaf li inside [b0, b1) and returns how
// many leaves it covered (more than one when a whole subtree is a hole).
func (s *Store) unmapLeaf(li, b0, b1 uint64) (uint64, error) {
	if err := s.lockShared(true); err != nil {
		return 0, err
	}
	defer s.unlockShared(true)
	if skip, err := s.absentLeaves(li); err != nil || skip > 0 {
		return skip, err
	}
	lo, hi := max(b0, li*leafEntries), min(b1, (li+1)*leafEntries)
	leaf, err := s.getNode(0, li)
	if err != nil {
		return 0, err
	}
	hasMapped := false
	leaf.mu.RLock()
	for i := lo; i < hi; i++ {
		if leaf.leaf[i%leafEntries].mapped() {
			hasMapped = true
			break
		}
	}
	leaf.mu.RUnlock()
	if !hasMapped {
		return 1, nil
	}
	s.lockRange(lo, hi, true)
	defer s.unlockRange(lo, hi, true)
	if leaf, err = s.dirtyLeaf(li); err != nil {
		return 0, err
	}
	if leaf.committing.Load() {
		return 0, errCommitting{}
	}
	leaf.mu.Lock()
	for i := lo; i < hi; i++ {
		e := &leaf.leaf[i%leafEntries]
		*e = leafEntry{flags: e.flags & flagSlot}
	}
	leaf.mu.Unlock()
	return 1, nil
}
