package storage_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dataembassy/embassy/storage"
)

// changedBlocks returns the physical blocks that differ between a and b.
func changedBlocks(a, b []byte) []int64 {
	var out []int64
	for i := 0; i < len(a); i += storage.BlockSize {
		if !bytes.Equal(a[i:i+storage.BlockSize], b[i:i+storage.BlockSize]) {
			out = append(out, int64(i/storage.BlockSize))
		}
	}
	return out
}

func physBlock(img []byte, p int64) []byte {
	return img[p*storage.BlockSize : (p+1)*storage.BlockSize]
}

// tamperEnv is a store with block 5 written three times (A, B, C), each
// flushed, and the device images after each step.
type tamperEnv struct {
	dev        *memDevice
	ctr        *memCounter
	before     []byte // after Format
	imgA, imgC []byte
	// dataA and leafA are the physical blocks that commit A wrote for block
	// 5's data and for its leaf; commit C reused both slots.
	dataA, leafA int64
	valueC       []byte
}

const tamperBlock = 5

func newTamperEnv(t *testing.T) *tamperEnv {
	t.Helper()
	e := &tamperEnv{dev: newMemDevice(2 << 20), ctr: &memCounter{}}
	s, err := storage.Format(e.dev, storage.FormatOptions{KEK: testKEK, Size: 200 * storage.BlockSize, Counter: e.ctr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteAt(fill(100, 4096), (tamperBlock+1)*4096); err != nil { // a neighbour
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	e.before = e.dev.snapshot()
	for i, v := range []uint64{1, 2, 3} {
		e.valueC = fill(v, 4096)
		if _, err := s.WriteAt(e.valueC, tamperBlock*4096); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			e.imgA = e.dev.snapshot()
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A reboot: the next session's Open advances the counter.
	if s, err = storage.Open(e.dev, storage.OpenOptions{KEK: testKEK, Counter: e.ctr}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	e.imgC = e.dev.snapshot()
	ch := changedBlocks(e.before, e.imgA)
	// Changed by commit A: a superblock, the leaf, the root, the data block
	// (highest, since data comes last in the layout).
	if len(ch) != 4 || ch[0] > 1 {
		t.Fatalf("commit A changed blocks %v; layout assumption broken", ch)
	}
	e.leafA, e.dataA = ch[1], ch[3]
	return e
}

func (e *tamperEnv) modify(f func(img []byte)) {
	img := e.dev.snapshot()
	f(img)
	e.dev.restore(img)
}

func (e *tamperEnv) open(t *testing.T) *storage.Store {
	t.Helper()
	s, err := storage.Open(e.dev, storage.OpenOptions{KEK: testKEK, Counter: e.ctr})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func wantIntegrity(t *testing.T, s *storage.Store, block int64, wantData bool) {
	t.Helper()
	buf := bytes.Repeat([]byte{0xAA}, 4096)
	_, err := s.ReadAt(buf, block*4096)
	var ie *storage.IntegrityError
	if !errors.Is(err, storage.ErrIntegrity) || !errors.As(err, &ie) {
		t.Fatalf("read block %d: err = %v, want an IntegrityError", block, err)
	}
	if wantData && ie.Block != block || !wantData && ie.Block != -1 {
		t.Fatalf("IntegrityError names block %d level %d, want data=%v for block %d", ie.Block, ie.Level, wantData, block)
	}
	if !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatal("buffer holds bytes after an integrity failure")
	}
	if s.Stats().IntegrityFailures == 0 {
		t.Fatal("integrity failure not counted")
	}
}

func TestTamperDetected(t *testing.T) {
	tests := []struct {
		name     string
		tamper   func(e *tamperEnv, img []byte)
		wantData bool // the failure is on the data block (else metadata)
	}{
		{"bit flip in data", func(e *tamperEnv, img []byte) {
			physBlock(img, e.dataA)[100] ^= 1 // C lives in A's slot
		}, true},
		{"bit flip in leaf metadata", func(e *tamperEnv, img []byte) {
			physBlock(img, e.leafA)[tamperBlock*32+20] ^= 0x80
		}, false},
		{"block copied from another index", func(e *tamperEnv, img []byte) {
			// Block 6 was written once, in the same slot region as A.
			copy(physBlock(img, e.dataA), physBlock(img, e.dataA+1))
		}, true},
		{"older copy of a data block", func(e *tamperEnv, img []byte) {
			copy(physBlock(img, e.dataA), physBlock(e.imgA, e.dataA))
		}, true},
		{"older copy of a metadata block", func(e *tamperEnv, img []byte) {
			copy(physBlock(img, e.leafA), physBlock(e.imgA, e.leafA))
		}, false},
		{"data block from another store", func(e *tamperEnv, img []byte) {
			other := newTamperEnv(t)
			copy(physBlock(img, e.dataA), physBlock(other.imgC, other.dataA))
		}, true},
		{"leaf from another store", func(e *tamperEnv, img []byte) {
			other := newTamperEnv(t)
			copy(physBlock(img, e.leafA), physBlock(other.imgC, other.leafA))
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTamperEnv(t)
			e.modify(func(img []byte) { tc.tamper(e, img) })
			s := e.open(t)
			wantIntegrity(t, s, tamperBlock, tc.wantData)
			bad, err := s.Verify()
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(bad) == 0 || bad[0].First > tamperBlock || bad[0].First+bad[0].Count <= tamperBlock {
				t.Fatalf("Verify = %+v, want a range covering block %d", bad, tamperBlock)
			}
			if tc.wantData {
				if len(bad) != 1 || bad[0].Count != 1 {
					t.Fatalf("Verify = %+v, want only block %d", bad, tamperBlock)
				}
				// Its neighbour is unaffected.
				got := make([]byte, 4096)
				if _, err := s.ReadAt(got, (tamperBlock+1)*4096); err != nil || !bytes.Equal(got, fill(100, 4096)) {
					t.Fatalf("neighbour: %v", err)
				}
			}
		})
	}
}

func TestTamperSuperblock(t *testing.T) {
	t.Run("whole image rolled back", func(t *testing.T) {
		e := newTamperEnv(t)
		e.dev.restore(e.imgA)
		if _, err := storage.Open(e.dev, storage.OpenOptions{KEK: testKEK, Counter: e.ctr}); !errors.Is(err, storage.ErrRollback) {
			t.Fatalf("Open = %v, want ErrRollback", err)
		}
	})
	t.Run("older superblocks replayed", func(t *testing.T) {
		e := newTamperEnv(t)
		e.modify(func(img []byte) { copy(img[:2*4096], e.imgA[:2*4096]) })
		if _, err := storage.Open(e.dev, storage.OpenOptions{KEK: testKEK, Counter: e.ctr}); !errors.Is(err, storage.ErrRollback) {
			t.Fatalf("Open = %v, want ErrRollback", err)
		}
	})
	t.Run("newest superblock overwritten by an older one", func(t *testing.T) {
		e := newTamperEnv(t)
		e.modify(func(img []byte) {
			// A's superblock into the other copy, over this session's
			// newest: A's fails the copy-parity check, the remaining copy
			// is from the previous session and the counter says so.
			chA := changedBlocks(e.before, e.imgA)[0]
			copy(physBlock(img, 1-chA), physBlock(e.imgA, chA))
		})
		if _, err := storage.Open(e.dev, storage.OpenOptions{KEK: testKEK, Counter: e.ctr}); !errors.Is(err, storage.ErrRollback) {
			t.Fatalf("Open = %v, want ErrRollback", err)
		}
	})
	t.Run("superblock bit flip", func(t *testing.T) {
		e := newTamperEnv(t)
		e.modify(func(img []byte) { img[60] ^= 1; img[4096+60] ^= 1 })
		_, err := storage.Open(e.dev, storage.OpenOptions{KEK: testKEK, Counter: e.ctr})
		if !errors.Is(err, storage.ErrIntegrity) {
			t.Fatalf("Open = %v, want ErrIntegrity", err)
		}
	})
	t.Run("superblocks of another store", func(t *testing.T) {
		e := newTamperEnv(t)
		other := newTamperEnv(t)
		e.modify(func(img []byte) { copy(img[:2*4096], other.imgC[:2*4096]) })
		s, err := storage.Open(e.dev, storage.OpenOptions{KEK: testKEK})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer s.Close()
		if _, err := s.ReadAt(make([]byte, 4096), tamperBlock*4096); !errors.Is(err, storage.ErrIntegrity) {
			t.Fatalf("read = %v, want ErrIntegrity", err)
		}
	})
}

// TestTamperMultiBlockRead checks that reads of many blocks, which decrypt
// in place in the caller's buffer (and on several cores from 64 blocks),
// still name the bad block and leave no bytes behind.
func TestTamperMultiBlockRead(t *testing.T) {
	for _, n := range []int64{2, 3, 8, 100, 200 - tamperBlock + 3} {
		e := newTamperEnv(t)
		e.modify(func(img []byte) { physBlock(img, e.dataA)[7] ^= 1 })
		s := e.open(t)
		// The bad block last, in the middle, first.
		for _, first := range []int64{tamperBlock - n + 1, tamperBlock - n/2, tamperBlock} {
			first = min(max(first, 0), 200-n)
			buf := bytes.Repeat([]byte{0xAA}, int(n*4096))
			_, err := s.ReadAt(buf, first*4096)
			var ie *storage.IntegrityError
			if !errors.As(err, &ie) || ie.Block != tamperBlock {
				t.Fatalf("read %d blocks at %d: err = %v, want an IntegrityError for block %d", n, first, err, tamperBlock)
			}
			if !bytes.Equal(buf, make([]byte, len(buf))) {
				t.Fatalf("read %d blocks at %d: buffer holds bytes after an integrity failure", n, first)
			}
		}
		// The neighbour still reads back in a multi-block read that skips
		// the bad block.
		got := make([]byte, 2*4096)
		if _, err := s.ReadAt(got, (tamperBlock+1)*4096); err != nil || !bytes.Equal(got[:4096], fill(100, 4096)) || !bytes.Equal(got[4096:], make([]byte, 4096)) {
			t.Fatalf("neighbours: %v", err)
		}
	}
}
