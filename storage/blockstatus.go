package storage

// BlockStatus describes [off, off+length) as extents of data and holes,
// in order and covering the range exactly.
func (s *Store) BlockStatus(off, length int64) ([]Extent, error) {
	if err := s.checkRange(off, length); err != nil {
		return nil, err
	}
	var out []Extent
	add := func(o, l int64, zero bool) {
		if n := len(out); n > 0 && out[n-1].Zero == zero && out[n-1].Offset+out[n-1].Length == o {
			out[n-1].Length += l
			return
		}
		out = append(out, Extent{Offset: o, Length: l, Zero: zero})
	}
	end := off + length
	for pos := off; pos < end; {
		li := uint64(pos/BlockSize) / leafEntries
		next, err := s.statusLeaf(li, pos, end, add)
		if err != nil {
			return nil, err
		}
		pos = next
	}
	return out, nil
}

func (s *Store) statusLeaf(li uint64, pos, end int64, add func(int64, int64, bool)) (int64, error) {
	if err := s.lockShared(false); err != nil {
		return 0, err
	}
	defer s.unlockShared(false)
	skip, err := s.absentLeaves(li)
	if err != nil {
		return 0, err
	}
	if skip > 0 {
		next := min(end, int64(li+skip)*leafEntries*BlockSize)
		add(pos, next-pos, true)
		return next, nil
	}
	leaf, err := s.getNode(0, li)
	if err != nil {
		return 0, err
	}
	leafEnd := min(end, int64(li+1)*leafEntries*BlockSize)
	leaf.mu.RLock()
	defer leaf.mu.RUnlock()
	for pos < leafEnd {
		i := uint64(pos / BlockSize)
		next := min(leafEnd, int64(i+1)*BlockSize)
		add(pos, next-pos, !leaf.leaf[i%leafEntries].mapped())
		pos = next
	}
	return pos, nil
}
