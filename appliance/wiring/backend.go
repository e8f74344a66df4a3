package wiring

import (
	"errors"
	"unsafe"

	"github.com/dataembassy/embassy/storage"
	"github.com/dataembassy/embassy/storage/nbd"
)

// StoreBackend serves an authenticated store over NBD: it is the store as
// an nbd.Backend. Reads, writes and the rest go straight to the store;
// extents are shown as nbd's type, and an error wrapping
// storage.ErrIntegrity is wrapped so that it also matches nbd.ErrIntegrity
// (the server answers it with EIO and counts it), keeping its text.
type StoreBackend struct {
	*storage.Store
}

var _ nbd.Backend = StoreBackend{}

// This conversion compiles only while storage.Extent and nbd.Extent have
// the same fields in the same order, which is what lets BlockStatus hand
// the store's slice to nbd without copying it.
var _ = nbd.Extent(storage.Extent{})

// ReadAt reads from the store.
func (b StoreBackend) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.Store.ReadAt(p, off)
	return n, integrity(err)
}

// WriteAt writes to the store.
func (b StoreBackend) WriteAt(p []byte, off int64) (int, error) {
	n, err := b.Store.WriteAt(p, off)
	return n, integrity(err)
}

// Flush commits the store.
func (b StoreBackend) Flush() error { return integrity(b.Store.Flush()) }

// Trim unmaps the range in the store.
func (b StoreBackend) Trim(off, length int64) error {
	return integrity(b.Store.Trim(off, length))
}

// WriteZeroes unmaps the range in the store, which then reads as zeros.
func (b StoreBackend) WriteZeroes(off, length int64) error {
	return integrity(b.Store.WriteZeroes(off, length))
}

// Cache reads the range's metadata ahead.
func (b StoreBackend) Cache(off, length int64) error {
	return integrity(b.Store.Cache(off, length))
}

// BlockStatus reports the store's extents as nbd's: the same slice, seen
// as the identical type (block status is asked for on every request by
// some clients, so it is not copied).
func (b StoreBackend) BlockStatus(off, length int64) ([]nbd.Extent, error) {
	ext, err := b.Store.BlockStatus(off, length)
	if err != nil {
		return nil, integrity(err)
	}
	return unsafe.Slice((*nbd.Extent)(unsafe.Pointer(unsafe.SliceData(ext))), len(ext)), nil
}

// integrity wraps an error that is storage.ErrIntegrity so that it is
// nbd.ErrIntegrity too; other errors (and nil) are returned as they are.
func integrity(err error) error {
	if err == nil || !errors.Is(err, storage.ErrIntegrity) {
		return err
	}
	return &integrityError{err}
}

// integrityError is a store integrity error seen through nbd.
type integrityError struct{ err error }

func (e *integrityError) Error() string { return e.err.Error() }

// Unwrap keeps errors.Is and errors.As working for the store's error
// (storage.ErrIntegrity, *storage.IntegrityError) and adds nbd's.
func (e *integrityError) Unwrap() []error { return []error{e.err, nbd.ErrIntegrity} }
