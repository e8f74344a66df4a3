package storage_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
)

// memDevice is an in-memory Device that simulates a volatile write cache:
// writes since the last Sync are pending and a power cut (crash) applies
// any subset of them, possibly torn at 512-byte granularity.
type memDevice struct {
	mu      sync.Mutex
	durable []byte
	pending []pendingWrite
	// syncs counts Sync calls; failAfterWrites, when > 0, makes the device
	// "lose power" at that many more writes or syncs (all later I/O fails).
	syncs           int
	failAfterWrites int
	dead            bool
}

type pendingWrite struct {
	off  int64
	data []byte
}

var errPowerCut = fmt.Errorf("memdev: power cut")

func newMemDevice(size int64) *memDevice { return &memDevice{durable: make([]byte, size)} }

func (d *memDevice) Size() (int64, error) { return int64(len(d.durable)), nil }

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return 0, errPowerCut
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.durable)) {
		return 0, fmt.Errorf("memdev: read out of range")
	}
	copy(p, d.durable[off:])
	// Pending writes are visible to reads (they sit in the cache).
	for _, w := range d.pending {
		overlay(p, off, w)
	}
	return len(p), nil
}

func overlay(p []byte, off int64, w pendingWrite) {
	lo, hi := max(off, w.off), min(off+int64(len(p)), w.off+int64(len(w.data)))
	if lo < hi {
		copy(p[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
	}
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return 0, errPowerCut
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.durable)) {
		return 0, fmt.Errorf("memdev: write out of range")
	}
	if d.failAfterWrites > 0 {
		d.failAfterWrites--
		if d.failAfterWrites == 0 {
			d.dead = true
			return 0, errPowerCut
		}
	}
	d.pending = append(d.pending, pendingWrite{off, append([]byte(nil), p...)})
	return len(p), nil
}

func (d *memDevice) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return errPowerCut
	}
	if d.failAfterWrites > 0 {
		// Power may also go while the cache is being flushed.
		d.failAfterWrites--
		if d.failAfterWrites == 0 {
			d.dead = true
			return errPowerCut
		}
	}
	for _, w := range d.pending {
		copy(d.durable[w.off:], w.data)
	}
	d.pending = nil
	d.syncs++
	return nil
}

// crash simulates a power cut: each pending write, split into 512-byte
// sectors, is applied or dropped at random, in random order, and the
// device comes back alive with only durable contents.
func (d *memDevice) crash(r *rand.Rand) {
	d.mu.Lock()
	defer d.mu.Unlock()
	type sector struct {
		off  int64
		data []byte
	}
	var secs []sector
	for _, w := range d.pending {
		for o := 0; o < len(w.data); o += 512 {
			e := min(o+512, len(w.data))
			secs = append(secs, sector{w.off + int64(o), w.data[o:e]})
		}
	}
	r.Shuffle(len(secs), func(i, j int) { secs[i], secs[j] = secs[j], secs[i] })
	keep := r.Float64()
	for _, s := range secs {
		if r.Float64() < keep {
			copy(d.durable[s.off:], s.data)
		}
	}
	d.pending = nil
	d.dead = false
	d.failAfterWrites = 0
}

// raw returns a copy of the durable-plus-pending contents.
func (d *memDevice) snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := append([]byte(nil), d.durable...)
	for _, w := range d.pending {
		copy(b[w.off:], w.data)
	}
	return b
}

// restore replaces the device contents (an attacker swapping the image).
func (d *memDevice) restore(b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.durable, b)
	d.pending = nil
}
