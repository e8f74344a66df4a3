package storage

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// maxChunk is how many blocks one internal I/O step covers (1 MiB).
const maxChunk = 256

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

// Scratch buffers come from two pools so that 4 KiB requests do not
// allocate (and zero) 1 MiB buffers whenever the GC empties the pools.
const smallBufBlocks = 4

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufBlocks*BlockSize+16); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, maxChunk*BlockSize+16); return &b }}
)

// getBuf returns a scratch buffer of at least blocks*BlockSize+16 bytes.
func getBuf(blocks int) *[]byte {
	if blocks <= smallBufBlocks {
		return smallBufs.Get().(*[]byte)
	}
	return largeBufs.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if len(*b) == smallBufBlocks*BlockSize+16 {
		smallBufs.Put(b)
	} else {
		largeBufs.Put(b)
	}
}

// nonceBytes builds a data nonce: the session's random 48-bit salt, then
// the low 48 bits of the write counter.
func (s *Store) nonceBytes(dst *[12]byte, n uint64) {
	copy(dst[:6], s.nonceSalt[:])
	var c [8]byte
	binary.BigEndian.PutUint64(c[:], n)
	copy(dst[6:], c[2:])
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

// parallelMin is the request size (in blocks) from which the AES-GCM work
// of one request is spread over several cores.
const parallelMin = 64

// gcmWorkers is how many goroutines share the AES-GCM work of nb blocks.
func gcmWorkers(nb int) int {
	if nb < parallelMin {
		return 1
	}
	return max(1, min(runtime.GOMAXPROCS(0), nb/(parallelMin/2)))
}

// parallelBlocks calls f on consecutive sub-ranges of [0, nb), concurrently
// when nb is large and more than one CPU is available.
func parallelBlocks(nb int, f func(k0, k1 int)) {
	w := gcmWorkers(nb)
	if w < 2 {
		f(0, nb)
		return
	}
	per := (nb + w - 1) / w
	var wg sync.WaitGroup
	for k0 := per; k0 < nb; k0 += per {
		wg.Add(1)
		go func(k0 int) {
			defer wg.Done()
			f(k0, min(k0+per, nb))
		}(k0)
	}
	f(0, per)
	wg.Wait()
}

// chunkBlocks returns the blocks [b0, b1) covering the bytes from pos up to
// end, at most maxChunk of them: ReadAt and WriteAt work in such chunks.
func chunkBlocks(pos, end int64) (b0, b1 uint64) {
	b0 = uint64(pos / BlockSize)
	b1 = uint64((end + BlockSize - 1) / BlockSize)
	return b0, min(b1, b0+maxChunk)
}

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
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b0, b1 := chunkBlocks(pos, off+int64(len(p)))
		m, err := s.readSpan(p[n:], pos, b0, b1)
		n += m
		if err != nil {
			clear(p[n:])
			return n, err
		}
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// readSpan reads the part of blocks [b0, b1) starting at pos into p and
// returns how many bytes it copied.
func (s *Store) readSpan(p []byte, pos int64, b0, b1 uint64) (int, error) {
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	if err := s.usableLocked(false); err != nil {
		return 0, err
	}
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

// WriteAt writes p at off. Writes past the end fail with ErrOutOfRange
// and write nothing. Partial blocks are read, merged and rewritten under
// the block's lock, so concurrent sub-block writes do not lose updates.
// The data is durable after the next Flush.
func (s *Store) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > s.Size() || int64(len(p)) > s.Size()-off {
		return 0, ErrOutOfRange
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b0, b1 := chunkBlocks(pos, off+int64(len(p)))
		m, err := s.writeSpan(p[n:], pos, b0, b1)
		n += m
		if err != nil {
			return n, err
		}
		if err := s.maybeCommit(); err != nil {
			return n, err
		}
	}
	return n, nil
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
	s.writeMu.RLock()
	defer s.writeMu.RUnlock()
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	if err := s.usableLocked(true); err != nil {
		return 0, err
	}
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
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	if err := s.usableLocked(false); err != nil {
		return 0, err
	}
	if skip, err := s.absentLeaves(li); err != nil || skip > 0 {
		return skip, err
	}
	_, err := s.getNode(0, li)
	return 1, err
}

func (s *Store) checkRange(off, length int64) error {
	if off < 0 || length < 0 || off > s.Size() || length > s.Size()-off {
		return ErrOutOfRange
	}
	return nil
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
	s.writeMu.RLock()
	defer s.writeMu.RUnlock()
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	if err := s.usableLocked(true); err != nil {
		return 0, err
	}
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
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	if err := s.usableLocked(false); err != nil {
		return 0, err
	}
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
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	if err := s.usableLocked(false); err != nil {
		return 0, err
	}
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
