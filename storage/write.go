package storage

import (
	"cmp"
	"fmt"
	"sync"
)

// WriteAt writes p at off. Writes past the end fail with ErrOutOfRange
// and write nothing. Partial blocks are read, merged and rewritten under
// the block's lock, so concurrent sub-block writes do not lose updates.
// The data is durable after the next Flush.
func (s *Store) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > s.Size() || int64(len(p)) > s.Size()-off {
		return 0, ErrOutOfRange
	}
	return eachChunk(p, off, func(p []byte, pos int64, b0, b1 uint64) (int, error) {
		m, err := s.writeSpan(p, pos, b0, b1)
		if err == nil {
			err = s.maybeCommit()
		}
		return m, err
	})
}

// errRetry asks writeSpan's caller to retry after a commit.
type errRetry struct{}

func (errRetry) Error() string { return "retry" }

// errCommitting asks writeSpan's or unmap's caller to retry once the
// running commit has finished: the write touches a leaf it is committing.
type errCommitting struct{}

func (errCommitting) Error() string { return "leaf is being committed" }

func (s *Store) writeSpan(p []byte, pos int64, b0, b1 uint64) (int, error) {
	for {
		m, err := s.writeSpanOnce(p, pos, b0, b1)
		switch err.(type) {
		case errRetry:
			if err := s.Flush(); err != nil {
				return 0, err
			}
			continue
		case errCommitting:
			s.waitCommit()
			continue
		}
		return m, err
	}
}

func (s *Store) writeSpanOnce(p []byte, pos int64, b0, b1 uint64) (int, error) {
	if err := s.lockShared(true); err != nil {
		return 0, err
	}
	defer s.unlockShared(true)
	nb := int(b1 - b0)
	// Reserve nonces first: past the superblock's reservation we must
	// commit (which reserves more) before using them.
	n0 := s.nextNonce.Add(uint64(nb)) - uint64(nb)
	if n0+uint64(nb) > s.nonceLimit.Load() {
		return 0, errRetry{}
	}
	if n0+uint64(nb) > maxNonceCounter {
		return 0, ErrNoncesExhausted
	}
	s.lockRange(b0, b1, true)
	defer s.unlockRange(b0, b1, true)

	start := int(pos - int64(b0)*BlockSize)
	span := nb * BlockSize
	m := span - start
	if m > len(p) {
		m = len(p)
	}
	src := p[:m]
	var plain []byte
	if start == 0 && m == span {
		plain = src
	} else {
		// Merge into the current contents of the first and last block.
		tp := getBuf(nb)
		defer putBuf(tp)
		plain = (*tp)[:span]
		if start != 0 {
			if err := s.readChunk(plain[:BlockSize], b0, b0+1, nil); err != nil {
				return 0, err
			}
		}
		if end := start + m; end%BlockSize != 0 && (start == 0 || end > BlockSize) {
			if err := s.readChunk(plain[span-BlockSize:], b1-1, b1, nil); err != nil {
				return 0, err
			}
		}
		copy(plain[start:], src)
	}

	var smallLeaves [4]*node
	var smallSlots [4]int
	var smallNews [4]leafEntry
	var leaves []*node
	var slots, bigSlots []int
	var news, bigNews []leafEntry
	if nb <= len(smallLeaves) { // the common 4 KiB request allocates nothing
		leaves, slots, news = smallLeaves[:nb], smallSlots[:nb], smallNews[:nb]
	} else {
		// The parallel path uses only these, so that its goroutines do
		// not make the small arrays escape.
		bigSlots, bigNews = make([]int, nb), make([]leafEntry, nb)
		leaves, slots, news = make([]*node, nb), bigSlots, bigNews
	}
	for k := 0; k < nb; k++ {
		i := b0 + uint64(k)
		if k == 0 || i%leafEntries == 0 {
			l, err := s.dirtyLeaf(i / leafEntries)
			if err != nil {
				return 0, err
			}
			if l.committing.Load() {
				// Its free slots are the ones the commit now publishes.
				return 0, errCommitting{}
			}
			leaves[k] = l
		} else {
			leaves[k] = leaves[k-1]
		}
		l := leaves[k]
		l.mu.RLock()
		slots[k] = int(l.free[i%leafEntries])
		l.mu.RUnlock()
	}

	bp := getBuf(nb)
	defer putBuf(bp)
	ct := *bp
	// Large requests seal and write on several cores, each its own share.
	var err error
	if w := gcmWorkers(nb); w >= 2 {
		var errMu sync.Mutex
		parallelBlocks(nb, func(k0, k1 int) {
			sp := getBuf(1)
			s.sealBlocks(ct, plain, bigNews, bigSlots, b0, n0, k0, k1, *sp)
			putBuf(sp)
			if e := s.writeRuns(ct, bigSlots, b0, k0, k1); e != nil {
				errMu.Lock()
				err = cmp.Or(err, e)
				errMu.Unlock()
			}
		})
	} else {
		sp := getBuf(1)
		s.sealBlocks(ct, plain, news, slots, b0, n0, 0, nb, *sp)
		putBuf(sp)
		err = s.writeRuns(ct, slots, b0, 0, nb)
	}
	if err != nil {
		return 0, err
	}
	for k := 0; k < nb; k++ {
		l := leaves[k]
		l.mu.Lock()
		l.leaf[(b0+uint64(k))%leafEntries] = news[k]
		l.mu.Unlock()
	}
	return m, nil
}

// writeRuns writes the ciphertext of blocks [k0, k1) from ct, one pwrite
// per run of blocks contiguous on disk.
func (s *Store) writeRuns(ct []byte, slots []int, b0 uint64, k0, k1 int) error {
	for k := k0; k < k1; {
		j := k + 1
		for j < k1 && slots[j] == slots[k] {
			j++
		}
		off := int64(s.geom.dataBlock(b0+uint64(k), slots[k])) * BlockSize
		if _, err := s.dev.WriteAt(ct[k*BlockSize:j*BlockSize], off); err != nil {
			return fmt.Errorf("storage: write data: %w", err)
		}
		k = j
	}
	return nil
}

// sealBlocks encrypts blocks [k0, k1) of plain into ct (same offsets)
// with nonces from counter n0+k and fills in news[k]. Each block's tag
// first lands on the next block's head in ct, which that block's seal then
// overwrites; the range's last block, when another worker owns the next
// one, is sealed into scratch instead. Nonce and associated data live in
// scratch's tail: as locals they would escape through the AEAD interface.
func (s *Store) sealBlocks(ct, plain []byte, news []leafEntry, slots []int, b0, n0 uint64, k0, k1 int, scratch []byte) {
	nb := len(news)
	aad := (*[24]byte)(scratch[BlockSize+16 : BlockSize+40])
	nonce := scratch[BlockSize+40 : BlockSize+52]
	for k := k0; k < k1; k++ {
		e := &news[k]
		e.flags = flagMapped | byte(slots[k]<<1)
		s.nonceBytes(&e.nonce, n0+uint64(k))
		copy(nonce, e.nonce[:])
		pt, ad := plain[k*BlockSize:(k+1)*BlockSize], s.blockAAD(aad, b0+uint64(k))
		if k == k1-1 && k1 < nb {
			out := s.keys.data.Seal(scratch[:0], nonce, pt, ad)
			copy(ct[k*BlockSize:], out[:BlockSize])
			copy(e.tag[:], out[BlockSize:])
			continue
		}
		out := s.keys.data.Seal(ct[k*BlockSize:k*BlockSize], nonce, pt, ad)
		copy(e.tag[:], out[BlockSize:])
	}
}
