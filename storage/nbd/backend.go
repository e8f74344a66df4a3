package nbd

import "errors"

// Backend is the block device behind an export. File implements it; the
// authenticated store does through appliance/wiring's StoreBackend, which
// maps its extents and integrity errors to this package's.
//
// Methods are called concurrently from many goroutines. WriteAt and ReadAt
// accept any offset and length inside Size; a backend with larger internal
// blocks does read-modify-write itself.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every write that has completed durable.
	Flush() error
	// Trim discards the range; it then reads as zeros.
	Trim(off, length int64) error
	// WriteZeroes makes the range read as zeros. It should be fast (no data
	// written); a backend that cannot zero quickly returns an error wrapping
	// errors.ErrUnsupported and the server falls back to writing zeros.
	WriteZeroes(off, length int64) error
	// BlockStatus reports the allocation state of the range as consecutive
	// extents starting at off.
	BlockStatus(off, length int64) ([]Extent, error)
	// Size is the export size in bytes.
	Size() int64
}

// Extent is a run of a backend's byte range with one allocation state, as
// reported by BlockStatus.
type Extent struct {
	Offset int64
	Length int64
	// Zero is true for a hole: the range reads as zeros and holds no data.
	Zero bool
}

// ErrIntegrity is what a backend's errors wrap when stored data failed
// authentication. The server answers such a request with EIO, counts it in
// Stats.IntegrityErrors and logs it, and the connection carries on.
var ErrIntegrity = errors.New("nbd: backend integrity check failed")

// noHoleZeroer is implemented by backends whose WriteZeroes deallocates
// but that can also zero keeping the range allocated (NBD_CMD_FLAG_NO_HOLE).
type noHoleZeroer interface {
	WriteZeroesNoHole(off, length int64) error
}

// cacher is implemented by backends that can prefetch (NBD_CMD_CACHE).
type cacher interface {
	Cache(off, length int64) error
}

// inliner is implemented by backends that can tell cheaply whether a read
// or write would be served without waiting for a device, so that the
// connection's reader goroutine may serve it itself (File). A backend
// whose requests cost much CPU (the store's cryptography) does not
// implement it: its requests then run in parallel on the workers.
type inliner interface {
	// readAtNoWait reads like ReadAt if it can do so without waiting for a
	// device, and otherwise reads nothing and returns errWouldBlock.
	readAtNoWait(p []byte, off int64) (int, error)
	// writeInline reports whether a write of n bytes at off is expected to
	// complete without waiting for a device.
	writeInline(off, n int64) bool
}

// errWouldBlock is returned by an inliner's readAtNoWait when the read
// would wait for a device.
var errWouldBlock = errors.New("nbd: would block")
