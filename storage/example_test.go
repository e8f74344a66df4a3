package storage_test

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dataembassy/embassy/storage"
)

// Format a store on a file, write, flush, reopen with the recovery key.
func Example() {
	dir, _ := os.MkdirTemp("", "store-example")
	defer os.RemoveAll(dir)
	dev, err := storage.CreateFileDevice(filepath.Join(dir, "disk.img"), 16<<20)
	if err != nil {
		panic(err)
	}
	defer dev.Close()
	kek := make([]byte, storage.KEKSize)
	rand.Read(kek)
	recovery, _ := storage.GenerateRecoveryKey()
	counter := storage.NewFileCounter(filepath.Join(dir, "counter"))

	s, err := storage.Format(dev, storage.FormatOptions{KEK: kek, Recovery: recovery.PublicKey(), Counter: counter, Size: 4 << 20})
	if err != nil {
		panic(err)
	}
	s.WriteAt([]byte("registers of the home state"), 5000) // any offset and length
	if err := s.Close(); err != nil {                      // Close flushes
		panic(err)
	}

	// Offline, without the KEK: the recovery key opens it read-only.
	s, err = storage.Open(dev, storage.OpenOptions{Recovery: recovery, ReadOnly: true})
	if err != nil {
		panic(err)
	}
	defer s.Close()
	buf := make([]byte, 27)
	s.ReadAt(buf, 5000)
	fmt.Printf("%s (store of %d MiB)\n", buf, s.Size()>>20)
	// Output: registers of the home state (store of 4 MiB)
}
