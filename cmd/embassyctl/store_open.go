package main

import (
	"fmt"
	"io"
	"os"

	"github.com/dataembassy/embassy/storage"
)

// addKEKFlags adds --kek and --counter, the store's key and rollback
// counter, which every command that opens or formats a store (store
// show/verify/export/format, serve) takes alike; note ends their help.
func addKEKFlags(fs *cmdFlags, note string) (kek, counter *string) {
	kek = fs.String("kek", "", "KEK file (32 raw bytes or 64 hex digits)"+note)
	counter = fs.String("counter", "", "file-backed monotonic rollback counter (optional)"+note)
	return kek, counter
}

// keyFlags are the ways to open a store.
type keyFlags struct {
	kek, recovery, counter *string
}

// newKeyFlags returns the flag set of "store name [flags] DEVICE" with
// the flags that open a store.
func newKeyFlags(name string, stdout, stderr io.Writer) (*cmdFlags, *keyFlags) {
	fs := newFlags("store "+name, "[flags] DEVICE", stdout, stderr).args(1, 1)
	var k keyFlags
	k.kek, k.counter = addKEKFlags(fs, "")
	k.recovery = fs.String("recovery-key", "", "recovery private key file (PEM), instead of --kek")
	return fs, &k
}

func (k *keyFlags) openOptions() (storage.OpenOptions, error) {
	var o storage.OpenOptions
	switch {
	case *k.kek != "" && *k.recovery != "":
		return o, fmt.Errorf("%w: give --kek or --recovery-key, not both", errUsage)
	case *k.kek != "":
		kek, err := readKEKFile(*k.kek)
		if err != nil {
			return o, err
		}
		o.KEK = kek
	case *k.recovery != "":
		b, err := os.ReadFile(*k.recovery)
		if err != nil {
			return o, err
		}
		if o.Recovery, err = storage.ParseRecoveryPrivateKey(b); err != nil {
			return o, err
		}
	default:
		return o, fmt.Errorf("%w: --kek or --recovery-key is required", errUsage)
	}
	if *k.counter != "" {
		o.Counter = storage.NewFileCounter(*k.counter)
	}
	return o, nil
}

// openStoreReadOnly opens the store on path read-only with the key flags.
func openStoreReadOnly(path string, k *keyFlags) (*storage.Store, func(), error) {
	o, err := k.openOptions()
	if err != nil {
		return nil, nil, err
	}
	o.ReadOnly = true
	dev, err := storage.OpenFileDevice(path, true)
	if err != nil {
		return nil, nil, err
	}
	s, err := storage.Open(dev, o)
	if err != nil {
		dev.Close()
		return nil, nil, err
	}
	return s, func() { s.Close(); dev.Close() }, nil
}
