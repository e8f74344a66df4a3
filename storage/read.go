package storage

import (
	"fmt"
	"io"
	"sync"
)

// ReadAt reads len(p) bytes at off. Reading past the end returns io.EOF
// with the bytes before it. A block that fails authentication fails the
// whole call with an error wrapping ErrIntegrity (an *IntegrityError).
func (s *Store) ReadAt(p []byte, off int64) (int, error) {
	size := s.Size()
	if off < 0 {
		return 0, ErrOutOfRange
	}
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > size-off {
		p = p[:size-off]
	}
	n, err := eachChunk(p, off, s.readSpan)
	if err != nil {
		clear(p[n:])
		return n, err
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// readSpan reads the part of blocks [b0, b1) starting at pos into p and
// returns how many bytes it copied.
func (s *Store) readSpan(p []byte, pos int64, b0, b1 uint64) (int, error) {
	if err := s.lockShared(false); err != nil {
		return 0, err
	}
	defer s.unlockShared(false)
	s.lockRange(b0, b1, false)
	defer s.unlockRange(b0, b1, false)
	start := int(pos - int64(b0)*BlockSize)
	span := int(b1-b0) * BlockSize
	if start == 0 && len(p) >= span {
		// Whole blocks: decrypt straight into p.
		if err := s.readChunk(p[:span], b0, b1, nil); err != nil {
			return 0, err
		}
		return span, nil
	}
	tp := getBuf(int(b1 - b0))
	defer putBuf(tp)
	tmp := (*tp)[:span]
	if err := s.readChunk(tmp, b0, b1, nil); err != nil {
		return 0, err
	}
	return copy(p, tmp[start:]), nil
}

// readChunk authenticates and decrypts blocks [b0, b1) into dst
// ((b1-b0)*BlockSize bytes). Unmapped blocks read as zeros. A block that
// fails authentication is zeroed; with report nil the first such failure
// is returned, otherwise each is passed to report and reading goes on.
// Callers hold commitMu shared and the blocks' stripe locks.
//
// The ciphertext is read straight into dst (one pread per run of blocks
// contiguous on disk) and decrypted in place, so large reads touch no
// scratch memory; a single-block read goes through a pooled scratch buffer
// instead, as GCM needs ciphertext||tag contiguous and dst has no room for
// the tag after its last block.
func (s *Store) readChunk(dst []byte, b0, b1 uint64, report func(uint64, error)) error {
	nb := int(b1 - b0)
	// entries stays on the stack for small requests; the parallel path
	// (never small) uses big, so that its goroutines do not make every
	// request's entries escape.
	var small [4]leafEntry
	var big, entries []leafEntry
	if nb <= len(small) {
		entries = small[:nb]
	} else {
		big = make([]leafEntry, nb)
		entries = big
	}
	var leaf *node
	for k := 0; k < nb; k++ {
		i := b0 + uint64(k)
		if leaf == nil || leaf.index != i/leafEntries {
			var err error
			if leaf, err = s.getNode(0, i/leafEntries); err != nil {
				return err
			}
		}
		leaf.mu.RLock()
		entries[k] = leaf.leaf[i%leafEntries]
		leaf.mu.RUnlock()
	}
	if nb == 1 && !entries[0].mapped() {
		clear(dst[:BlockSize])
		return nil
	}
	var failed []int
	if w := gcmWorkers(nb); w >= 2 {
		var err error
		if failed, err = s.readOpenParallel(dst, big, b0, w); err != nil {
			return err
		}
	} else {
		bp := getBuf(1)
		defer putBuf(bp)
		lone := nb == 1
		if lone {
			if err := s.readData((*bp)[:BlockSize], int64(s.geom.dataBlock(b0, entries[0].slot()))*BlockSize); err != nil {
				return err
			}
		} else if err := s.readRuns(dst, entries, b0); err != nil {
			return err
		}
		failed = s.openBlocks(dst, entries, b0, 0, nb, *bp, lone, nil)
	}
	for _, k := range failed {
		ie := s.integrity(&IntegrityError{Block: int64(b0) + int64(k), Reason: "data authentication failed"})
		if report == nil {
			return ie
		}
		report(b0+uint64(k), ie)
	}
	return nil
}

// readRuns reads the ciphertext of the mapped blocks among entries
// (blocks b0, b0+1, ...) into their places in dst, one pread per run of
// blocks contiguous on disk.
func (s *Store) readRuns(dst []byte, entries []leafEntry, b0 uint64) error {
	nb := len(entries)
	for k := 0; k < nb; {
		if !entries[k].mapped() {
			k++
			continue
		}
		slot := entries[k].slot()
		j := k + 1
		for j < nb && entries[j].mapped() && entries[j].slot() == slot {
			j++
		}
		off := int64(s.geom.dataBlock(b0+uint64(k), slot)) * BlockSize
		if err := s.readData(dst[k*BlockSize:j*BlockSize], off); err != nil {
			return err
		}
		k = j
	}
	return nil
}

// readData reads data-block ciphertext at off into p (private memory).
func (s *Store) readData(p []byte, off int64) error {
	if err := s.readDevice(p, off); err != nil {
		return fmt.Errorf("storage: read data: %w", err)
	}
	return nil
}

// readDevice reads the device at off into p (private memory), through
// the device mapping where there is one, else with pread. Callers
// authenticate p only after it returns: never the shared mapping itself.
func (s *Store) readDevice(p []byte, off int64) error {
	if s.dmap == nil {
		_, err := s.dev.ReadAt(p, off)
		return err
	}
	for len(p) > 0 {
		n := min(int64(len(p)), mapWindow-off%mapWindow)
		ok, err := s.dmap.readAt(p[:n], off)
		if err != nil {
			return err
		}
		if !ok {
			if _, err := s.dev.ReadAt(p[:n], off); err != nil {
				return err
			}
		}
		p, off = p[n:], off+n
	}
	return nil
}

// readOpenParallel is readRuns then openBlocks over all of entries, split
// between w goroutines (this one included), each reading and decrypting
// its own share, so that the page-cache copies run in parallel too and
// overlap with decryption. It returns the failed block indexes in order.
func (s *Store) readOpenParallel(dst []byte, entries []leafEntry, b0 uint64, w int) ([]int, error) {
	nb := len(entries)
	per := (nb + w - 1) / w
	res := make([][]int, w)
	errs := make([]error, w)
	work := func(i int) {
		k0, k1 := min(i*per, nb), min((i+1)*per, nb)
		if errs[i] = s.readRuns(dst[k0*BlockSize:k1*BlockSize], entries[k0:k1], b0+uint64(k0)); errs[i] != nil {
			return
		}
		bp := getBuf(1)
		res[i] = s.openBlocks(dst, entries, b0, k0, k1, *bp, false, nil)
		putBuf(bp)
	}
	var wg sync.WaitGroup
	for i := 1; i < w; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(i)
		}()
	}
	work(0)
	wg.Wait()
	var failed []int
	for i, r := range res {
		if errs[i] != nil {
			return nil, errs[i]
		}
		failed = append(failed, r...)
	}
	return failed, nil
}

// openBlocks decrypts blocks [k0, k1) of dst in place and appends the
// indexes of blocks that fail authentication to failed, in order. scratch
// (a pooled small buffer) holds the ciphertext when lone is set (a
// single-block request, read there) and otherwise serves as room for the
// range's last block; its tail holds the nonce and associated data, which
// would escape to the heap as locals (they go through an interface).
//
// GCM wants ciphertext||tag contiguous: each block borrows the first 16
// bytes of the next block for its tag and puts them back, except the
// range's last block, whose next block may not exist or may be another
// worker's: it is copied to scratch first.
func (s *Store) openBlocks(dst []byte, entries []leafEntry, b0 uint64, k0, k1 int, scratch []byte, lone bool, failed []int) []int {
	tmp := scratch[:BlockSize+16]
	aad := (*[24]byte)(scratch[BlockSize+16 : BlockSize+40])
	nonce := scratch[BlockSize+40 : BlockSize+52]
	for k := k0; k < k1; k++ {
		out := dst[k*BlockSize : (k+1)*BlockSize]
		e := &entries[k]
		if !e.mapped() {
			clear(out)
			continue
		}
		ad := s.blockAAD(aad, b0+uint64(k))
		copy(nonce, e.nonce[:])
		var err error
		switch {
		case lone || k == k1-1:
			if !lone {
				copy(tmp, out)
			}
			copy(tmp[BlockSize:], e.tag[:])
			_, err = s.keys.data.Open(out[:0], nonce, tmp, ad)
		default:
			end := (k + 1) * BlockSize
			var save [16]byte
			copy(save[:], dst[end:end+16])
			copy(dst[end:], e.tag[:])
			_, err = s.keys.data.Open(out[:0], nonce, dst[k*BlockSize:end+16], ad)
			copy(dst[end:], save[:])
		}
		if err != nil {
			clear(out)
			failed = append(failed, k)
		}
	}
	return failed
}
