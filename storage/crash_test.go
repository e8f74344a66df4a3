package storage_test

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage"
)

// memCounter is an in-memory Counter.
type memCounter struct {
	mu sync.Mutex
	v  uint64
}

func (c *memCounter) Read() (uint64, error) { c.mu.Lock(); defer c.mu.Unlock(); return c.v, nil }
func (c *memCounter) Increment() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.v++
	return c.v, nil
}

// crashSchedules returns how many random power-cut schedules to run:
// STORAGE_CRASH_SCHEDULES if set (make soak), else 2000 (200 with -short
// or under the race detector, which is ten times slower).
func crashSchedules(t *testing.T) int {
	if v := os.Getenv("STORAGE_CRASH_SCHEDULES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("bad STORAGE_CRASH_SCHEDULES %q", v)
		}
		return n
	}
	if testing.Short() || raceEnabled {
		return 200
	}
	return 2000
}

// TestCrashConsistency runs random operation sequences against a device
// that loses power at a random write; pending writes are then applied
// partially, out of order and torn at 512-byte granularity. The store must
// open again, and every block must read as its value at the last
// successful Flush or a value written after it, never an integrity error.
func TestCrashConsistency(t *testing.T) {
	n := crashSchedules(t)
	seed0 := uint64(0)
	if v := os.Getenv("STORAGE_CRASH_SEED"); v != "" {
		s, _ := strconv.ParseUint(v, 10, 64)
		seed0 = s
	}
	inside0, after0 := windowWritesInside.Load(), windowWritesAfter.Load()
	for i := 0; i < n; i++ {
		if err := crashSchedule(seed0 + uint64(i)); err != nil {
			t.Fatalf("schedule seed %d: %v", seed0+uint64(i), err)
		}
	}
	inside, after := windowWritesInside.Load()-inside0, windowWritesAfter.Load()-after0
	t.Logf("writes issued during a flush's sync: %d finished inside it, %d waited for the flush", inside, after)
	if n >= 100 && (inside == 0 || after == 0) {
		t.Fatalf("schedules never exercised both kinds of write during a flush (%d inside, %d after)", inside, after)
	}
}

// Writes the schedules issue while a flush syncs: finished during the
// sync (leaves outside the commit) or only after the flush (committing
// leaves).
var windowWritesInside, windowWritesAfter atomic.Int64

// TestCrashConsistencyShortNonceReserve repeats the schedules with a tiny
// nonce reservation, so writes keep running out of reserved nonces and
// commit in the middle of WriteAt.
func TestCrashConsistencyShortNonceReserve(t *testing.T) {
	defer storage.SetNonceReserve(600)()
	n := crashSchedules(t) / 4
	for i := 0; i < n; i++ {
		seed := uint64(1_000_000 + i)
		if err := crashSchedule(seed); err != nil {
			t.Fatalf("schedule seed %d: %v", seed, err)
		}
	}
}

const crashBlocks = 520 // 5 leaves under a root, more than the tiny cache holds

func crashSchedule(seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 0xc0ffee))
	dev := newMemDevice((2*crashBlocks + 16) * storage.BlockSize)
	ctr := &memCounter{}
	opts := storage.OpenOptions{KEK: testKEK, Counter: ctr, CacheBytes: 1}
	s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: crashBlocks * storage.BlockSize, Counter: ctr, Open: opts})
	if err != nil {
		return fmt.Errorf("format: %w", err)
	}
	size := s.Size()
	cur := make([]byte, size) // model of the current contents
	// ok[b] lists the acceptable contents of block b after a crash.
	// Blocks untouched since the last flush have only their flushed value,
	// which is zero or cur's.
	ok := make([][][]byte, crashBlocks)
	touched := map[int64]bool{}
	block := func(b int64) []byte {
		return append([]byte(nil), cur[b*storage.BlockSize:(b+1)*storage.BlockSize]...)
	}
	resetOK := func() {
		for b := range touched {
			ok[b] = [][]byte{block(b)}
		}
		clear(touched)
	}
	noteChange := func(off, n int64) {
		for b := off / storage.BlockSize; b*storage.BlockSize < off+n; b++ {
			if ok[b] == nil {
				ok[b] = [][]byte{make([]byte, storage.BlockSize)}
			}
			ok[b] = append(ok[b], block(b))
			touched[b] = true
		}
	}
	// Lose power after a random number of device writes.
	dev.mu.Lock()
	dev.failAfterWrites = 1 + r.IntN(120)
	dev.mu.Unlock()

	hot := int64(r.IntN(crashBlocks-8)) * storage.BlockSize // concentrate on a few blocks
	for op := 0; op < 60; op++ {
		var off, n int64
		if r.IntN(2) == 0 {
			off = hot + r.Int64N(8*storage.BlockSize)
		} else {
			off = r.Int64N(size)
		}
		switch r.IntN(3) {
		case 0:
			n = 1 + r.Int64N(600)
		case 1:
			off -= off % storage.BlockSize
			n = storage.BlockSize * (1 + r.Int64N(4))
		default:
			n = 1 + r.Int64N(3*storage.BlockSize)
		}
		n = min(n, size-off)
		var err error
		switch k := r.IntN(10); {
		case k < 6:
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			// A write that fails may still have landed: count it first.
			copy(cur[off:], data)
			noteChange(off, n)
			_, err = s.WriteAt(data, off)
		case k < 7:
			clear(cur[off : off+n])
			noteChange(off, n)
			err = s.Trim(off, n)
		case k < 8:
			clear(cur[off : off+n])
			noteChange(off, n)
			err = s.WriteZeroes(off, n)
		case k < 9:
			if r.IntN(2) == 0 {
				if err = s.Flush(); err == nil {
					resetOK()
				}
				break
			}
			// A write whose commit (the tiny cache makes every write
			// commit) syncs while a second write runs: that one finishes
			// during the sync if its leaves are not being committed, else
			// after the commit. Then a flush.
			woff := r.Int64N(size)
			wn := min(1+r.Int64N(2*storage.BlockSize), size-woff)
			wdata := make([]byte, wn)
			data := make([]byte, n)
			for _, b := range [][]byte{wdata, data} {
				for i := range b {
					b[i] = byte(r.Uint32())
				}
			}
			done := make(chan error, 1)
			dev.mu.Lock()
			dev.onSync = func() {
				// On this goroutine, inside WriteAt: the model is ours.
				copy(cur[woff:], wdata)
				noteChange(woff, wn)
				dev.mu.Lock()
				w0 := dev.writes
				dev.mu.Unlock()
				go func() {
					_, err := s.WriteAt(wdata, woff)
					done <- err
				}()
				// Did the second write reach the device during the sync?
				for deadline := time.Now().Add(5 * time.Millisecond); time.Now().Before(deadline); {
					dev.mu.Lock()
					landed := dev.writes > w0
					dev.mu.Unlock()
					if landed {
						windowWritesInside.Add(1)
						return
					}
					time.Sleep(50 * time.Microsecond)
				}
				windowWritesAfter.Add(1)
			}
			dev.mu.Unlock()
			copy(cur[off:], data)
			noteChange(off, n)
			_, err = s.WriteAt(data, off)
			dev.mu.Lock()
			hooked := dev.onSync == nil
			dev.onSync = nil
			dev.mu.Unlock()
			if hooked {
				werr := <-done
				if werr != nil && !errors.Is(werr, errPowerCut) && !errors.Is(werr, storage.ErrFailed) {
					return fmt.Errorf("op %d: write during a commit's sync: %w", op, werr)
				}
				err = cmp.Or(err, werr)
			}
			if err == nil {
				if err = s.Flush(); err == nil {
					resetOK()
				}
			}
		default:
			// A clean close and reopen drops every cached node.
			if err = s.Close(); err == nil {
				resetOK()
				s, err = storage.Open(dev, opts)
			}
		}
		if err != nil {
			if !errors.Is(err, errPowerCut) {
				return fmt.Errorf("op %d: unexpected error %w", op, err)
			}
			break
		}
	}
	// Power cut (or end of the schedule without one): drop, reorder and
	// tear what was not synced.
	dev.crash(r)
	if r.IntN(4) == 0 {
		// Lose power again while the next Open commits.
		dev.mu.Lock()
		dev.failAfterWrites = 1 + r.IntN(3)
		dev.mu.Unlock()
		if s2, err := storage.Open(dev, opts); err == nil {
			s2.Close()
		} else if !errors.Is(err, errPowerCut) {
			return fmt.Errorf("open during second cut: %w", err)
		}
		dev.crash(r)
	}
	s2, err := storage.Open(dev, opts)
	if err != nil {
		return fmt.Errorf("open after crash: %w", err)
	}
	defer s2.Close()
	buf := make([]byte, storage.BlockSize)
	for b := 0; b < crashBlocks; b++ {
		if _, err := s2.ReadAt(buf, int64(b)*storage.BlockSize); err != nil {
			return fmt.Errorf("block %d after crash: %w", b, err)
		}
		found := ok[b] == nil && allZero(buf)
		for _, v := range ok[b] {
			if bytes.Equal(v, buf) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("block %d after crash holds neither its flushed value nor a later one (%d candidates)", b, len(ok[b]))
		}
	}
	// The reopened store must be fully usable.
	if _, err := s2.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write after recovery: %w", err)
	}
	if err := s2.Flush(); err != nil {
		return fmt.Errorf("flush after recovery: %w", err)
	}
	bad, err := s2.Verify()
	if err != nil || len(bad) != 0 {
		return fmt.Errorf("verify after recovery: %v %v", bad, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TestCrashDuringRewrap cuts power at every point of a Rewrap: afterwards
// the store opens with the new KEK or, if the new slot never became
// durable, with the old one, and the data is intact either way.
func TestCrashDuringRewrap(t *testing.T) {
	newKEK := bytes.Repeat([]byte{0x99}, storage.KEKSize)
	for cut := 1; cut <= 8; cut++ {
		for seed := uint64(0); seed < 8; seed++ {
			dev := newMemDevice(1 << 20)
			s, err := storage.Format(dev, storage.FormatOptions{KEK: testKEK, Size: 100 * storage.BlockSize})
			if err != nil {
				t.Fatal(err)
			}
			data := fill(seed, 5*storage.BlockSize)
			if _, err := s.WriteAt(data, 3*storage.BlockSize); err != nil {
				t.Fatal(err)
			}
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			dev.mu.Lock()
			dev.failAfterWrites = cut
			dev.mu.Unlock()
			rerr := s.Rewrap(newKEK)
			dev.crash(rand.New(rand.NewPCG(seed, uint64(cut))))
			s2, err := storage.Open(dev, storage.OpenOptions{KEK: newKEK})
			if errors.Is(err, storage.ErrKey) {
				if rerr == nil {
					t.Fatalf("cut %d: Rewrap succeeded but the new KEK does not open", cut)
				}
				s2, err = storage.Open(dev, storage.OpenOptions{KEK: testKEK})
			}
			if err != nil {
				t.Fatalf("cut %d seed %d: open after interrupted rewrap: %v", cut, seed, err)
			}
			got := make([]byte, len(data))
			if _, err := s2.ReadAt(got, 3*storage.BlockSize); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("cut %d seed %d: data after interrupted rewrap: %v", cut, seed, err)
			}
			s2.Close()
		}
	}
}
