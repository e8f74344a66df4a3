// Package storage is Embassy's authenticated, encrypted block store: 4096-byte
// blocks sealed with AES-256-GCM, a hash tree over their tags whose root and
// commit epoch live in the superblock, envelope keys (a DEK wrapped by the
// KEK and for an offline recovery key) and rollback detection against a
// monotonic counter kept outside the disk.
//
// The on-disk format is documented in docs/storage-format.md.
//
// Each file holds one concept. The Store: store.go (type, accessors,
// Close), open.go (Format, Open), superblock.go (reading and writing it),
// commit.go (Flush and metadata commits), keys.go (key slots, Rewrap).
// Its operations: read.go (ReadAt), write.go (WriteAt), trim.go (Trim,
// WriteZeroes), blockstatus.go, cache.go (Cache), verify.go. What they
// share: locks.go (lock order), chunk.go (request chunks, scratch buffers,
// parallel AES-GCM), nonce.go (data nonces and associated data), tree.go
// (metadata tree and its cache), format.go (on-disk encodings), mmap*.go
// (memory-mapped reads), device*.go, counter.go, info.go, errors.go.
package storage

import "errors"

// BlockSize is the store's block size in bytes. Reads and writes of any
// offset and length are accepted; sub-block writes are read-modify-write.
const BlockSize = 4096

// ErrIntegrity reports that stored data or metadata failed authentication:
// tampering, a block moved or mixed in from another store, or an older copy
// replayed. Errors wrapping it name the blocks concerned (see IntegrityError).
// No plaintext is ever returned alongside it.
var ErrIntegrity = errors.New("storage: integrity check failed")

// ErrRollback reports that the whole store is older than the monotonic
// counter says it must be: a rolled-back or replayed disk image.
var ErrRollback = errors.New("storage: store rolled back")

// Extent is a run of the store's byte range with one allocation state, as
// reported by BlockStatus.
type Extent struct {
	Offset int64
	Length int64
	// Zero is true for a hole: never written, trimmed or zeroed. Such ranges
	// read as zeros without touching ciphertext.
	Zero bool
}

// Counter is a monotonic counter kept outside the backing device (a TPM NV
// counter on the appliance, a file for tests and tools). Open compares it
// with the value recorded in the superblock to detect a whole-store rollback.
type Counter interface {
	// Read returns the counter's current value.
	Read() (uint64, error)
	// Increment adds one to the counter and returns the new value.
	Increment() (uint64, error)
}
