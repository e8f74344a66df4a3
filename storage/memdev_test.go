package storage_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
)

// memDevice is an in-memory Device that simulates a volatile write cache:
// writes since the last Sync are pending and a power cut (crash) applies
// any subset of them, in any order, torn at 512-byte granularity. Storage
// is sparse (4 KiB pages allocated on first write) so thousands of crash
// schedules stay cheap.
type memDevice struct {
	mu      sync.Mutex
	size    int64
	durable pages
	view    pages // durable with the pending writes applied: what reads see
	pending []pendingWrite
	// failAfterWrites, when > 0, makes the device lose power at that many
	// more writes or syncs: that operation and all later I/O fail.
	failAfterWrites int
	dead            bool
	// onSync, if set, runs (once: it is cleared) at the start of the next
	// Sync, before the device lock: the test's view into a flush's syncs.
	onSync func()
	writes int // successful WriteAt calls
}

const pageSize = 4096

type pages map[int64][]byte

func (p pages) read(b []byte, off int64) {
	for len(b) > 0 {
		pg, po := off/pageSize, off%pageSize
		n := min(int64(len(b)), pageSize-po)
		if src, ok := p[pg]; ok {
			copy(b[:n], src[po:])
		} else {
			clear(b[:n])
		}
		b, off = b[n:], off+n
	}
}

func (p pages) write(b []byte, off int64) {
	for len(b) > 0 {
		pg, po := off/pageSize, off%pageSize
		n := min(int64(len(b)), pageSize-po)
		dst, ok := p[pg]
		if !ok {
			dst = make([]byte, pageSize)
			p[pg] = dst
		}
		copy(dst[po:], b[:n])
		b, off = b[n:], off+n
	}
}

func (p pages) clone() pages {
	q := make(pages, len(p))
	for k, v := range p {
		q[k] = append([]byte(nil), v...)
	}
	return q
}

type pendingWrite struct {
	off  int64
	data []byte
}

var errPowerCut = fmt.Errorf("memdev: power cut")

func newMemDevice(size int64) *memDevice {
	return &memDevice{size: size, durable: pages{}, view: pages{}}
}

func (d *memDevice) Size() (int64, error) { return d.size, nil }

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return 0, errPowerCut
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("memdev: read out of range")
	}
	d.view.read(p, off)
	return len(p), nil
}

// tick counts an operation towards a scheduled power cut.
func (d *memDevice) tick() bool {
	if d.failAfterWrites > 0 {
		d.failAfterWrites--
		if d.failAfterWrites == 0 {
			d.dead = true
			return false
		}
	}
	return true
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead || !d.tick() {
		return 0, errPowerCut
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("memdev: write out of range")
	}
	d.writes++
	d.pending = append(d.pending, pendingWrite{off, append([]byte(nil), p...)})
	d.view.write(p, off)
	return len(p), nil
}

func (d *memDevice) Sync() error {
	d.mu.Lock()
	hook := d.onSync
	d.onSync = nil
	d.mu.Unlock()
	if hook != nil {
		hook()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Power may also go while the cache is being flushed.
	if d.dead || !d.tick() {
		return errPowerCut
	}
	for _, w := range d.pending {
		d.durable.write(w.data, w.off)
	}
	d.pending = nil
	return nil
}

// crash simulates a power cut: each pending write, split into 512-byte
// sectors, is applied or dropped at random, in random order, and the
// device comes back alive with only durable contents.
func (d *memDevice) crash(r *rand.Rand) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var secs []pendingWrite
	for _, w := range d.pending {
		for o := 0; o < len(w.data); o += 512 {
			e := min(o+512, len(w.data))
			secs = append(secs, pendingWrite{w.off + int64(o), w.data[o:e]})
		}
	}
	r.Shuffle(len(secs), func(i, j int) { secs[i], secs[j] = secs[j], secs[i] })
	keep := r.Float64()
	for _, s := range secs {
		if r.Float64() < keep {
			d.durable.write(s.data, s.off)
		}
	}
	d.pending = nil
	d.view = d.durable.clone()
	d.dead = false
	d.failAfterWrites = 0
}

// snapshot returns the contents reads currently see.
func (d *memDevice) snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := make([]byte, d.size)
	d.view.read(b, 0)
	return b
}

// restore replaces the device contents, as if synced (an attacker
// swapping the image).
func (d *memDevice) restore(b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.durable, d.pending = pages{}, nil
	for off := int64(0); off < int64(len(b)); off += pageSize {
		pg := b[off:min(off+pageSize, int64(len(b)))]
		if !allZero(pg) {
			d.durable.write(pg, off)
		}
	}
	d.view = d.durable.clone()
}
