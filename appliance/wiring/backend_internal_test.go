package wiring

import (
	"errors"
	"testing"

	"github.com/dataembassy/embassy/storage"
	"github.com/dataembassy/embassy/storage/nbd"
)

// TestIntegrityWrapping checks that a store integrity error seen through
// the adapter is nbd.ErrIntegrity too, still the store's, and reads the
// same.
func TestIntegrityWrapping(t *testing.T) {
	orig := &storage.IntegrityError{Block: 7, Reason: "data authentication failed"}
	err := integrity(orig)
	if !errors.Is(err, nbd.ErrIntegrity) || !errors.Is(err, storage.ErrIntegrity) {
		t.Errorf("%v: not both nbd.ErrIntegrity and storage.ErrIntegrity", err)
	}
	var ie *storage.IntegrityError
	if !errors.As(err, &ie) || ie != orig {
		t.Errorf("%v: the store's *IntegrityError is lost", err)
	}
	if err.Error() != orig.Error() {
		t.Errorf("text %q, want %q", err.Error(), orig.Error())
	}
	other := errors.New("disk on fire")
	if integrity(other) != other || integrity(nil) != nil {
		t.Error("an error that is not about integrity, or nil, was changed")
	}
}
