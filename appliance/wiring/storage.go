package wiring

import (
	"log/slog"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/storage"
)

// Storage implements appliance.Storage with package storage.
type Storage struct {
	// Counter is the monotonic counter the store is bound to (the TPM NV
	// counter on the appliance). Nil disables whole-disk rollback detection
	// and is only for tests.
	Counter storage.Counter
	// Logger receives the store's integrity failures.
	Logger *slog.Logger
}

// Format creates a store on dev under kek.
func (s *Storage) Format(dev appliance.Device, kek []byte) (appliance.Store, error) {
	st, err := storage.Format(dev, storage.FormatOptions{
		KEK:     kek,
		Counter: s.Counter,
		Open:    storage.OpenOptions{Counter: s.Counter, Logger: s.Logger},
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Open opens the store on dev with kek.
func (s *Storage) Open(dev appliance.Device, kek []byte) (appliance.Store, error) {
	st, err := storage.Open(dev, storage.OpenOptions{KEK: kek, Counter: s.Counter, Logger: s.Logger})
	if err != nil {
		return nil, err
	}
	return st, nil
}
