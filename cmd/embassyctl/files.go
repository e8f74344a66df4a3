package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/dataembassy/embassy/storage"
)

// writeNew writes a file that must not exist yet and syncs it: keys,
// manifests and images are never overwritten by accident, and losing a
// key file loses a store.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readKEKFile reads a KEK file: 32 raw bytes, or 64 hex digits
// (surrounding space allowed).
func readKEKFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("KEK: %w", err)
	}
	if len(b) == storage.KEKSize {
		return b, nil
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != storage.KEKSize {
		return nil, fmt.Errorf("KEK file %s: want %d raw bytes or %d hex digits", path, storage.KEKSize, 2*storage.KEKSize)
	}
	return k, nil
}
