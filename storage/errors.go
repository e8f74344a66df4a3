package storage

import (
	"errors"
	"fmt"
)

// IntegrityError names what failed authentication. It wraps ErrIntegrity.
type IntegrityError struct {
	// Block is the logical block index whose data failed, or -1 when a
	// metadata block failed.
	Block int64
	// Level and Node identify the failed metadata block (level 0 are the
	// leaves) when Block is -1; Level -1 means a superblock.
	Level int
	Node  uint64
	// Reason says what did not match.
	Reason string
}

func (e *IntegrityError) Error() string {
	if e.Block >= 0 {
		return fmt.Sprintf("storage: integrity check failed for block %d (byte offset %d): %s", e.Block, e.Block*BlockSize, e.Reason)
	}
	if e.Level < 0 {
		return "storage: integrity check failed for the superblock: " + e.Reason
	}
	return fmt.Sprintf("storage: integrity check failed for metadata level %d node %d: %s", e.Level, e.Node, e.Reason)
}

// Unwrap makes errors.Is(err, ErrIntegrity) true.
func (e *IntegrityError) Unwrap() error { return ErrIntegrity }

// ErrClosed is returned by operations on a closed store.
var ErrClosed = errors.New("storage: store is closed")

// ErrReadOnly is returned by writes to a store opened read-only.
var ErrReadOnly = errors.New("storage: store is read-only")

// ErrFailed wraps the error that poisoned the store: a failed commit leaves
// the in-memory state ahead of the disk, so the store refuses further I/O
// and must be reopened (which recovers the last committed state).
var ErrFailed = errors.New("storage: store failed; reopen it")

// ErrOutOfRange is returned for I/O beyond the store's size.
var ErrOutOfRange = errors.New("storage: offset out of range")
