package storage

import (
	"log/slog"
	"sync"
	"sync/atomic"
)

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

// checkRange rejects [off, off+length) unless it lies within the store.
func (s *Store) checkRange(off, length int64) error {
	if off < 0 || length < 0 || off > s.Size() || length > s.Size()-off {
		return ErrOutOfRange
	}
	return nil
}

// usableLocked returns why the store cannot serve an operation (a write,
// with write) now, or nil. Called with commitMu held.
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
	s.lockExclusive()
	defer s.unlockExclusive()
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
