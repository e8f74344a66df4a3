package storage

import (
	"crypto/hmac"
	"crypto/hpke"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
)

// nonceReserve is how many nonces a commit reserves ahead in the
// superblock. After a crash the store skips the whole reserved range.
// A variable only so tests can shrink it (it must stay above maxChunk).
var nonceReserve uint64 = 1 << 24

// maxNonceCounter bounds the write counter: nonces carry its low 48 bits.
// 2^48 block writes is 1 EiB written over the store's life.
const maxNonceCounter = 1 << 48

// ErrNoncesExhausted is returned by writes once the store has used every
// nonce of its write counter (after 1 EiB of writes); copy the data to a
// newly formatted store.
var ErrNoncesExhausted = errors.New("storage: write counter exhausted")

// lockStripes is the number of per-block lock stripes.
const lockStripes = 1024

// DefaultCacheBytes is the metadata cache size used when the options leave
// it zero: 64 MiB of metadata covers 8 GiB of randomly accessed data.
const DefaultCacheBytes = 64 << 20

// FormatOptions configures Format.
type FormatOptions struct {
	// KEK wraps the new store's DEK in the KEK key slot. Required
	// (KEKSize bytes).
	KEK []byte
	// Recovery, if set, also wraps the DEK for this recovery public key
	// (see GenerateRecoveryKey), so the store can be opened offline
	// without the KEK.
	Recovery hpke.PublicKey
	// Size is the logical size in bytes, a multiple of BlockSize. Zero
	// means the largest size that fits on the device.
	Size int64
	// Counter, if set, is the monotonic counter the store is bound to;
	// the same counter must be given to Open.
	Counter Counter
	// Open configures the returned open store (its keys and Counter are
	// taken from these options).
	Open OpenOptions
}

// OpenOptions configures Open.
type OpenOptions struct {
	// KEK opens the KEK key slot. Exactly one of KEK and Recovery is needed.
	KEK []byte
	// Recovery opens the recovery key slot instead of the KEK.
	Recovery hpke.PrivateKey
	// Counter detects whole-store rollback (one counter per store: every
	// Open advances it): Open fails with ErrRollback
	// unless the superblock's counter value equals the counter (or is one
	// ahead: an Open interrupted after its commit), then advances it. Nil
	// disables the check (offline tools, recovery).
	Counter Counter
	// ReadOnly opens without writing anything: no commit at open, no
	// counter increment, and writes fail with ErrReadOnly.
	ReadOnly bool
	// CacheBytes bounds the metadata cache (dirty metadata awaiting a
	// commit included: the store commits early to stay within it). Zero
	// means DefaultCacheBytes.
	CacheBytes int64
	// Logger receives integrity failures and commit errors. Nil means
	// slog.Default().
	Logger *slog.Logger
	// NoMmap makes a store on a FileBacked device read with pread
	// instead of through memory mappings of the file (see
	// docs/storage-format.md, Memory-mapped reads).
	NoMmap bool
}

// Stats are counters about a store since it was opened.
type Stats struct {
	// IntegrityFailures counts blocks and metadata blocks that failed
	// authentication.
	IntegrityFailures uint64
	// Commits counts metadata commits (flushes that had work to do,
	// internal commits and the one at open).
	Commits uint64
	// CachedNodes is the number of metadata blocks in the cache now.
	CachedNodes int
}

// Store is an open authenticated, encrypted block store. All methods are
// safe for concurrent use.
type Store struct {
	dev      Device
	geom     geometry
	keys     *storeKeys
	dek      []byte
	readOnly bool
	log      *slog.Logger

	// flushMu serializes commits: held for a whole commit.
	// Lock order: flushMu, writeMu, commitMu.
	flushMu sync.Mutex
	// writeMu is held shared by every operation that changes data or
	// metadata (writes, trims) and exclusively by a commit while it writes
	// the dirty nodes and while it flips the free slots. A Flush releases
	// it across its syncs: writes to blocks whose leaf the commit does not
	// include go on meanwhile (see docs/storage-format.md, Concurrency).
	writeMu sync.RWMutex
	// commitMu is held shared by every I/O operation and exclusively by a
	// commit while it changes in-memory state (parent entries, superblock,
	// free slots); a commit releases it across its syncs and superblock
	// write, so reads go on while a flush waits for the disk.
	commitMu sync.RWMutex
	sb       superblock
	failed   error // set (under commitMu write) when a commit fails
	closed   bool

	uuid       [16]byte
	nonceSalt  [6]byte // random per Open: see docs/storage-format.md, nonces
	nextNonce  atomic.Uint64
	nonceLimit atomic.Uint64 // nonces below it are reserved by the committed superblock
	stripes    [lockStripes]sync.RWMutex
	cache      *nodeCache
	maxDirty   int64
	dmap       *devMap // nil: data reads use pread

	integrityFailures atomic.Uint64
	commits           atomic.Uint64
}

// Format creates a new, empty store on dev, destroying what dev held, and
// returns it open.
func Format(dev Device, opts FormatOptions) (*Store, error) {
	if len(opts.KEK) != KEKSize {
		return nil, fmt.Errorf("storage: KEK must be %d bytes, got %d", KEKSize, len(opts.KEK))
	}
	devSize, err := dev.Size()
	if err != nil {
		return nil, fmt.Errorf("storage: device size: %w", err)
	}
	devBlocks := uint64(devSize) / BlockSize
	var blocks uint64
	if opts.Size == 0 {
		blocks = blocksFitting(devBlocks)
		if blocks == 0 {
			return nil, fmt.Errorf("storage: device of %d bytes too small for a store", devSize)
		}
	} else {
		if opts.Size < 0 || opts.Size%BlockSize != 0 {
			return nil, fmt.Errorf("storage: size %d is not a positive multiple of %d", opts.Size, BlockSize)
		}
		blocks = uint64(opts.Size / BlockSize)
	}
	g, err := newGeometry(blocks)
	if err != nil {
		return nil, err
	}
	if g.total > devBlocks {
		return nil, fmt.Errorf("storage: %d-byte store needs a %d-byte device, have %d", blocks*BlockSize, g.total*BlockSize, devSize)
	}
	sb := superblock{version: FormatVersion, blocks: blocks, depth: uint32(g.depth()), nonceRes: nonceReserve}
	if _, err := rand.Read(sb.uuid[:]); err != nil {
		return nil, err
	}
	dek := make([]byte, dataKeyLen)
	if _, err := rand.Read(dek); err != nil {
		return nil, err
	}
	if sb.kekSlot, err = wrapKEK(opts.KEK, dek, sb.uuid); err != nil {
		return nil, err
	}
	if opts.Recovery != nil {
		if sb.recSlot, err = wrapRecovery(opts.Recovery, dek, sb.uuid); err != nil {
			return nil, fmt.Errorf("storage: wrap for recovery key: %w", err)
		}
	}
	if opts.Counter != nil {
		if sb.counter, err = opts.Counter.Read(); err != nil {
			return nil, fmt.Errorf("storage: read counter: %w", err)
		}
	}
	keys, err := deriveKeys(dek, sb.uuid)
	if err != nil {
		return nil, err
	}
	// Both copies are written so no superblock of an earlier store on the
	// device can win at Open.
	for epoch := uint64(0); epoch < sbCopies; epoch++ {
		sb.epoch = epoch
		if err := writeSuperblock(dev, keys, &sb); err != nil {
			return nil, err
		}
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("storage: sync: %w", err)
	}
	oo := opts.Open
	oo.KEK, oo.Recovery, oo.Counter = opts.KEK, nil, opts.Counter
	return Open(dev, oo)
}

func writeSuperblock(dev Device, keys *storeKeys, sb *superblock) error {
	b, err := sb.encode()
	if err != nil {
		return err
	}
	sb.mac = superblockMAC(keys.mac, b)
	copy(b[sbMACOffset:], sb.mac[:])
	if _, err := dev.WriteAt(b, int64(sb.epoch%sbCopies)*BlockSize); err != nil {
		return fmt.Errorf("storage: write superblock: %w", err)
	}
	return nil
}

// Open opens the store on dev with the KEK or the recovery private key.
// Unless ReadOnly it commits once (reserving nonces, recording the counter)
// and advances the counter.
func Open(dev Device, opts OpenOptions) (*Store, error) {
	if (opts.KEK == nil) == (opts.Recovery == nil) {
		return nil, errors.New("storage: Open needs exactly one of KEK and Recovery")
	}
	var best *superblock
	var bestDEK []byte
	var bestKeys *storeKeys
	var firstErr error
	buf := make([]byte, BlockSize)
	for c := int64(0); c < sbCopies; c++ {
		if _, err := dev.ReadAt(buf, c*BlockSize); err != nil {
			return nil, fmt.Errorf("storage: read superblock: %w", err)
		}
		sb, dek, keys, err := unlockSuperblock(buf, opts)
		if err != nil {
			firstErr = worseOpenError(firstErr, err)
			continue
		}
		if sb.epoch%sbCopies != uint64(c) {
			firstErr = worseOpenError(firstErr, &IntegrityError{Block: -1, Level: -1, Reason: "superblock in the wrong copy"})
			continue
		}
		if best == nil || sb.epoch > best.epoch {
			best, bestDEK, bestKeys = sb, dek, keys
		}
	}
	if best == nil {
		return nil, firstErr
	}
	g, _ := newGeometry(best.blocks) // validated by decodeSuperblock
	devSize, err := dev.Size()
	if err != nil {
		return nil, fmt.Errorf("storage: device size: %w", err)
	}
	if uint64(devSize)/BlockSize < g.total {
		return nil, fmt.Errorf("storage: device of %d bytes is smaller than the store's layout (%d bytes)", devSize, g.total*BlockSize)
	}
	cacheBytes := opts.CacheBytes
	if cacheBytes == 0 {
		cacheBytes = DefaultCacheBytes
	}
	capNodes := int(cacheBytes / (BlockSize + 512))
	if min := g.depth() + 2; capNodes < min {
		capNodes = min
	}
	s := &Store{
		dev: dev, geom: g, keys: bestKeys, dek: bestDEK, sb: *best,
		readOnly: opts.ReadOnly, log: opts.Logger,
		cache: newNodeCache(capNodes), maxDirty: int64(capNodes / 2),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.uuid = best.uuid
	if _, err := rand.Read(s.nonceSalt[:]); err != nil {
		return nil, err
	}
	s.nextNonce.Store(best.nonceRes)
	s.nonceLimit.Store(best.nonceRes)

	var cval uint64
	if opts.Counter != nil {
		if cval, err = opts.Counter.Read(); err != nil {
			return nil, fmt.Errorf("storage: read counter: %w", err)
		}
		if best.counter != cval && best.counter != cval+1 {
			return nil, fmt.Errorf("%w: superblock records counter %d, counter is %d", ErrRollback, best.counter, cval)
		}
	}
	if !opts.NoMmap {
		// Mapped address space is bounded by 256x the cache, so page tables
		// (8 bytes per 4 KiB) stay within half the cache's size. Windows
		// are mapped on first use, so a failed Open leaves none behind.
		s.dmap = newDevMap(dev, int64(g.total)*BlockSize, cacheBytes*256)
	}
	if opts.ReadOnly {
		return s, nil
	}
	s.flushMu.Lock()
	s.writeMu.Lock()
	s.commitMu.Lock()
	if opts.Counter != nil {
		s.sb.counter = cval + 1
	}
	err = s.commitLocked(true, false)
	s.commitMu.Unlock()
	s.writeMu.Unlock()
	s.flushMu.Unlock()
	if err != nil {
		return nil, err
	}
	if opts.Counter != nil {
		// The superblock now says cval+1; a crash before this Increment is
		// the "one ahead" case Open accepts.
		if _, err := opts.Counter.Increment(); err != nil {
			return nil, fmt.Errorf("storage: advance counter: %w", err)
		}
	}
	return s, nil
}

// worseOpenError picks the error Open reports when no superblock copy is
// usable: ErrKey first (one copy may be torn by a crash during Rewrap, the
// other wrapped for a different key: the caller should try its other
// key), then integrity failures, then malformed copies.
func worseOpenError(prev, err error) error {
	rank := func(e error) int {
		switch {
		case e == nil:
			return 0
		case errors.Is(e, ErrKey):
			return 3
		case errors.Is(e, ErrIntegrity):
			return 2
		default:
			return 1
		}
	}
	if rank(err) > rank(prev) {
		return err
	}
	return prev
}

func unlockSuperblock(b []byte, opts OpenOptions) (*superblock, []byte, *storeKeys, error) {
	sb, err := decodeSuperblock(b)
	if err != nil {
		return nil, nil, nil, err
	}
	var dek []byte
	if opts.KEK != nil {
		dek, err = unwrapKEK(opts.KEK, &sb.kekSlot, sb.uuid)
	} else {
		dek, err = unwrapRecovery(opts.Recovery, &sb.recSlot, sb.uuid)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	keys, err := deriveKeys(dek, sb.uuid)
	if err != nil {
		return nil, nil, nil, err
	}
	if mac := superblockMAC(keys.mac, b); !hmac.Equal(mac[:], sb.mac[:]) {
		return nil, nil, nil, &IntegrityError{Block: -1, Level: -1, Reason: "superblock MAC mismatch"}
	}
	return sb, dek, keys, nil
}

// Size returns the store's logical size in bytes.
func (s *Store) Size() int64 { return int64(s.geom.blocks) * BlockSize }

// Epoch returns the epoch of the last commit. It grows by one with every
// commit; the verifier records it to narrow rollback within a session.
func (s *Store) Epoch() uint64 {
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	return s.sb.epoch
}

// UUID returns the store's identity.
func (s *Store) UUID() [16]byte { return s.uuid }

// Stats returns counters about the store.
func (s *Store) Stats() Stats {
	return Stats{
		IntegrityFailures: s.integrityFailures.Load(),
		Commits:           s.commits.Load(),
		CachedNodes:       s.cache.len(),
	}
}

// integrity counts and logs an integrity failure and returns it.
func (s *Store) integrity(e *IntegrityError) error {
	s.integrityFailures.Add(1)
	if e.Block >= 0 {
		s.log.Error("storage integrity failure", "block", e.Block, "reason", e.Reason)
	} else {
		s.log.Error("storage integrity failure", "metadata_level", e.Level, "node", e.Node, "reason", e.Reason)
	}
	return e
}

// Flush commits every write completed before it: after Flush returns they
// survive a power cut.
func (s *Store) Flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if err := s.usableLocked(true); err != nil {
		return err
	}
	return s.commitLocked(false, true)
}

// waitCommit returns once the commit running now, if any, has finished.
func (s *Store) waitCommit() {
	s.flushMu.Lock()
	s.flushMu.Unlock() //nolint:staticcheck // an empty critical section: waiting is the point
}

func (s *Store) usableLocked(write bool) error {
	switch {
	case s.closed:
		return ErrClosed
	case s.failed != nil:
		return s.failed
	case write && s.readOnly:
		return ErrReadOnly
	}
	return nil
}

// Close commits outstanding writes and closes the store. It does not close
// the device.
func (s *Store) Close() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	err := s.failed
	if !s.readOnly && err == nil {
		err = s.commitLocked(false, false)
	}
	s.closed = true
	clear(s.dek)
	if s.dmap != nil {
		s.dmap.close() // no reader runs: they hold commitMu shared
	}
	return err
}

// Rewrap replaces the KEK key slot with the DEK wrapped under newKEK. No
// data is re-encrypted. Both superblock copies are rewritten, so the old
// KEK no longer opens this device (copies of older images aside). If
// Rewrap fails or power is lost during it, the store opens with the new
// KEK or, failing that (ErrKey), with the old one: call Rewrap again.
func (s *Store) Rewrap(newKEK []byte) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if err := s.usableLocked(true); err != nil {
		return err
	}
	slot, err := wrapKEK(newKEK, s.dek, s.sb.uuid)
	if err != nil {
		return err
	}
	s.sb.kekSlot = slot
	for i := 0; i < sbCopies; i++ {
		if err := s.commitLocked(true, false); err != nil {
			return err
		}
	}
	return nil
}

// commitLocked writes dirty metadata to the free slots, then the
// superblock with the new root and epoch. Order: metadata writes, one sync
// (covering the data written since the last commit too), superblock write,
// sync. The previous superblock and every
// block it references stay untouched, so a power cut at any instant leaves
// either the old or the new committed state. Called with flushMu, writeMu
// and commitMu held exclusively; it releases commitMu across the syncs
// and the superblock write, and with writers also writeMu, and holds both
// again when it returns. force writes the superblock even with nothing
// dirty.
func (s *Store) commitLocked(force, writers bool) error {
	dirty := s.cache.takeDirty()
	if len(dirty) == 0 && !force {
		return nil
	}
	err := s.commitNodes(dirty, writers)
	if err != nil {
		s.failed = fmt.Errorf("%w: commit: %w", ErrFailed, err)
		s.log.Error("storage commit failed; store disabled until reopened", "err", err)
		return s.failed
	}
	s.commits.Add(1)
	return nil
}

func (s *Store) commitNodes(dirty []*node, writers bool) error {
	sort.Slice(dirty, func(i, j int) bool {
		if dirty[i].level != dirty[j].level {
			return dirty[i].level < dirty[j].level
		}
		return dirty[i].index < dirty[j].index
	})
	buf := make([]byte, BlockSize)
	root := s.sb.root
	top := s.geom.depth() - 1
	for _, n := range dirty {
		// Parents were dirtied with their children, so they come later in
		// this sorted list and are still cached.
		var pe *nodeEntry
		var parent *node
		if n.level == top {
			pe = &root
		} else {
			parent = s.cache.lookup(nodeKey{n.level + 1, n.index / nodeFanout})
			if parent == nil || !parent.dirty.Load() {
				return fmt.Errorf("internal: parent of dirty node %d/%d not pinned", n.level, n.index)
			}
			pe = &parent.child[n.index%nodeFanout]
		}
		if n.level == 0 {
			encodeLeaf(buf, n.leaf)
		} else {
			encodeInner(buf, n.child)
		}
		slot := 0
		if pe.present() {
			slot = pe.slot() ^ 1
		}
		if _, err := s.dev.WriteAt(buf, int64(s.geom.nodeBlock(n.level, n.index, slot))*BlockSize); err != nil {
			return fmt.Errorf("write metadata: %w", err)
		}
		pe.hash = nodeHash(n.level, n.index, buf)
		pe.flags = flagMapped | byte(slot<<1)
	}
	next := s.sb
	next.root = root
	next.epoch++
	next.nonceRes = s.nextNonce.Load() + nonceReserve
	// Readers may run from here until the flip below, and with writers
	// so may writes to blocks of leaves this commit does not include
	// (writes to the others see committing and wait): the committed
	// nodes do not change, and everything a reader can load from disk
	// (clean nodes, data) or a writer can write (the free slots of
	// uncommitted leaves' blocks) is in slots neither the old nor the new
	// superblock references. See docs/storage-format.md, Concurrency.
	for _, n := range dirty {
		n.committing.Store(true)
	}
	s.commitMu.Unlock()
	if writers {
		s.writeMu.Unlock()
	}
	err := s.publish(&next)
	if writers {
		s.writeMu.Lock() // waits for the writes that ran meanwhile
	}
	s.commitMu.Lock()
	for _, n := range dirty {
		n.committing.Store(false)
	}
	if err != nil {
		return err
	}
	s.sb = next
	s.nonceLimit.Store(next.nonceRes)
	for _, n := range dirty {
		if n.level == 0 {
			for i := range n.leaf {
				n.free[i] = uint8(n.leaf[i].slot() ^ 1)
			}
		}
		n.dirty.Store(false)
	}
	// Nodes dirtied by writes during the syncs keep their ancestors
	// pinned, as absentLeaves and the next commit rely on; those
	// ancestors were in this commit and are clean now. No eviction can
	// run (commitMu is held), so they are all still cached.
	for _, n := range s.cache.dirtyNodes() {
		for l, i := n.level+1, n.index/nodeFanout; l < s.geom.depth(); l, i = l+1, i/nodeFanout {
			a := s.cache.lookup(nodeKey{l, i})
			if a == nil || !s.cache.markDirty(a) {
				return fmt.Errorf("internal: ancestor %d/%d of dirty node %d/%d not cached", l, i, n.level, n.index)
			}
		}
	}
	s.cache.recountDirty()
	return nil
}

// publish makes a commit durable: sync (metadata and data), superblock,
// sync. Called with writeMu held exclusively and commitMu not held.
func (s *Store) publish(next *superblock) error {
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("sync metadata: %w", err)
	}
	if err := writeSuperblock(s.dev, s.keys, next); err != nil {
		return err
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("sync superblock: %w", err)
	}
	return nil
}

// maybeCommit commits early when dirty metadata outgrows its share of the
// cache or the reserved nonces run low.
func (s *Store) maybeCommit() error {
	if s.cache.ndirty.Load() < s.maxDirty && !s.noncesLow(0) {
		return nil
	}
	return s.Flush()
}

// noncesLow reports whether n more nonces would pass the reservation.
// Called with commitMu held (either way) or as a hint.
func (s *Store) noncesLow(n uint64) bool {
	return s.nextNonce.Load()+n+maxChunk >= s.nonceLimit.Load()
}

// blockAAD is the associated data of block i: store identity and index.
func (s *Store) blockAAD(dst *[24]byte, i uint64) []byte {
	copy(dst[:16], s.uuid[:])
	binary.BigEndian.PutUint64(dst[16:], i)
	return dst[:]
}
