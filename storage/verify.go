package storage

// BadRange is a run of blocks that failed authentication.
type BadRange struct {
	// First is the first bad block's index; Count how many follow in a row.
	First, Count uint64
	// Err is the first block's error.
	Err error
}

// Verify authenticates every mapped block and every metadata block it
// depends on and returns the runs of blocks that failed. A metadata block
// that fails makes every block below it bad. The error is for I/O failures
// only.
func (s *Store) Verify() ([]BadRange, error) {
	var bad []BadRange
	mark := func(i, n uint64, err error) {
		if l := len(bad); l > 0 && bad[l-1].First+bad[l-1].Count == i {
			bad[l-1].Count += n
			return
		}
		bad = append(bad, BadRange{First: i, Count: n, Err: err})
	}
	dst := make([]byte, leafEntries*BlockSize)
	for li := uint64(0); li < s.geom.levels[0]; {
		n, err := s.verifyLeaf(li, dst, mark)
		if err != nil {
			return bad, err
		}
		li += n
	}
	return bad, nil
}

func (s *Store) verifyLeaf(li uint64, dst []byte, mark func(uint64, uint64, error)) (uint64, error) {
	if err := s.lockShared(false); err != nil {
		return 0, err
	}
	defer s.unlockShared(false)
	skip, err := s.absentLeaves(li)
	if err != nil {
		return s.verifyMetaFail(li, err, mark)
	}
	if skip > 0 {
		return skip, nil
	}
	b0 := li * leafEntries
	b1 := min(s.geom.blocks, b0+leafEntries)
	s.lockRange(b0, b1, false)
	defer s.unlockRange(b0, b1, false)
	err = s.readChunk(dst[:(b1-b0)*BlockSize], b0, b1, func(i uint64, err error) { mark(i, 1, err) })
	if err != nil {
		return s.verifyMetaFail(li, err, mark)
	}
	return 1, nil
}

func (s *Store) verifyMetaFail(li uint64, err error, mark func(uint64, uint64, error)) (uint64, error) {
	ie, ok := err.(*IntegrityError)
	if !ok {
		return 0, err
	}
	// The failed node covers leafSpan(level) leaves starting at a multiple.
	span := leafSpan(ie.Level)
	if ie.Level < 0 {
		span = s.geom.levels[0]
	}
	first := ie.Node * span
	if ie.Level < 0 {
		first = 0
	}
	endLeaf := min(first+span, s.geom.levels[0])
	b0 := li * leafEntries
	mark(b0, min(s.geom.blocks, endLeaf*leafEntries)-b0, err)
	return endLeaf - li, nil
}
