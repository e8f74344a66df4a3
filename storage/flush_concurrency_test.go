package storage_test

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage"
)

// gatedSyncDevice is a memDevice whose Sync, once armed, blocks until the
// test releases it: a flush stuck on a slow disk.
type gatedSyncDevice struct {
	*memDevice
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (d *gatedSyncDevice) Sync() error {
	if d.armed.CompareAndSwap(true, false) {
		close(d.entered)
		<-d.release
	}
	return d.memDevice.Sync()
}

// TestReadsDuringFlushSync checks that reads, and writes to leaves the
// flush does not include, complete while a flush waits for the device,
// that a write to a committing leaf waits for the flush, and that all see
// the right data afterwards and after a reopen.
func TestReadsDuringFlushSync(t *testing.T) {
	dev := &gatedSyncDevice{memDevice: newMemDevice(4 << 20), entered: make(chan struct{}), release: make(chan struct{})}
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: 256 * storage.BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	old := fill(1, 8*4096)
	if _, err := s.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	// Dirty block 3 (and its leaf), then flush with the first sync gated.
	fresh := fill(2, 4096)
	if _, err := s.WriteAt(fresh, 3*4096); err != nil {
		t.Fatal(err)
	}
	dev.armed.Store(true)
	flushed := make(chan error, 1)
	go func() { flushed <- s.Flush() }()
	<-dev.entered

	// Reads, of committing and untouched blocks, finish during the sync.
	want := append(append(append([]byte(nil), old[:3*4096]...), fresh...), old[4*4096:]...)
	readDone := make(chan error, 1)
	got := make([]byte, len(want))
	go func() {
		_, err := s.ReadAt(got, 0)
		readDone <- err
	}()
	select {
	case err := <-readDone:
		if err != nil {
			t.Fatalf("read during flush: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("read during flush returned wrong data")
		}
	case <-time.After(10 * time.Second):
		close(dev.release)
		t.Fatal("read blocked behind a flush's sync")
	}

	// A write to a block of a leaf the flush does not include (block 200:
	// leaf 1) finishes during the sync.
	other := fill(4, 4096)
	otherDone := make(chan error, 1)
	go func() {
		_, err := s.WriteAt(other, 200*4096)
		otherDone <- err
	}()
	select {
	case err := <-otherDone:
		if err != nil {
			t.Fatalf("write outside the committing leaves during flush: %v", err)
		}
	case <-time.After(10 * time.Second):
		close(dev.release)
		t.Fatal("write to an uncommitted leaf blocked behind a flush's sync")
	}

	// A write to a block of a committing leaf waits for the flush (it
	// must not pick a slot the flush is about to commit).
	wrote := make(chan error, 1)
	go func() {
		_, err := s.WriteAt(fill(3, 4096), 3*4096)
		wrote <- err
	}()
	select {
	case err := <-wrote:
		close(dev.release)
		t.Fatalf("write finished during a flush's sync (err %v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(dev.release)
	if err := <-flushed; err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write after flush: %v", err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	copy(want[3*4096:], fill(3, 4096))
	if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after flushes: err %v, data equal %v", err, bytes.Equal(got, want))
	}
	o := make([]byte, 4096)
	if _, err := s.ReadAt(o, 200*4096); err != nil || !bytes.Equal(o, other) {
		t.Fatalf("block written during the sync: err %v, data equal %v", err, bytes.Equal(o, other))
	}
	// Both must survive a reopen (the second flush committed them).
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = storage.Open(dev, storage.OpenOptions{KEK: testKEK}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(o, 200*4096); err != nil || !bytes.Equal(o, other) {
		t.Fatalf("block written during the sync, after reopen: err %v", err)
	}
	if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after reopen: err %v", err)
	}
	if bad, err := s.Verify(); err != nil || len(bad) != 0 {
		t.Fatalf("Verify = %v, %v", bad, err)
	}
}

// TestConcurrentReadWriteFlush runs readers, writers and flushes together
// (for -race) and checks every read sees a value some writer wrote.
func TestConcurrentReadWriteFlush(t *testing.T) {
	dev := newMemDevice(4 << 20)
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: 64 * storage.BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	const blocks, rounds = 64, 200
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				b := int64((i*7 + w*13) % blocks)
				if _, err := s.WriteAt(bytes.Repeat([]byte{byte(b)}, 4096), b*4096); err != nil {
					errs <- err
					return
				}
				if i%16 == 0 {
					if err := s.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := range rounds {
				b := int64((i*5 + r) % blocks)
				if _, err := s.ReadAt(buf, b*4096); err != nil {
					errs <- err
					return
				}
				// Each block holds zeros (never written) or its own index.
				if buf[0] != 0 && buf[0] != byte(b) || !bytes.Equal(buf, bytes.Repeat(buf[:1], 4096)) {
					t.Errorf("block %d reads %x...", b, buf[:4])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
