package storage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeSuperblock checks that superblock decoding never panics and is
// canonical: whatever decodes re-encodes to the same bytes.
func FuzzDecodeSuperblock(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		sb, err := decodeSuperblock(b)
		if err != nil {
			return
		}
		out, err := sb.encode()
		if err != nil {
			t.Fatalf("decoded superblock does not encode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatal("superblock decoding is not canonical")
		}
	})
}

// FuzzDecodeLeaf checks leaf decoding the same way.
func FuzzDecodeLeaf(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := decodeLeaf(b)
		if err != nil {
			return
		}
		out := make([]byte, BlockSize)
		encodeLeaf(out, es)
		if !bytes.Equal(out, b) {
			t.Fatal("leaf decoding is not canonical")
		}
	})
}

// FuzzDecodeInner checks inner-node decoding the same way.
func FuzzDecodeInner(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := decodeInner(b)
		if err != nil {
			return
		}
		out := make([]byte, BlockSize)
		encodeInner(out, es)
		if !bytes.Equal(out, b) {
			t.Fatal("inner node decoding is not canonical")
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed seed corpora under
// testdata/fuzz when STORAGE_WRITE_SEEDS=1; otherwise it checks that they
// exist.
func TestWriteFuzzSeeds(t *testing.T) {
	sb := superblock{version: FormatVersion, blocks: 1000, depth: 2, epoch: 7, counter: 3, nonceRes: 1 << 24}
	sb.root = nodeEntry{flags: flagMapped | flagSlot}
	sb.root.hash[0] = 9
	sb.kekSlot = kekSlot{present: true}
	sb.kekSlot.ct[5] = 1
	sb.recSlot = recoverySlot{kem: 0x647a, kdf: 1, aead: 2, enc: bytes.Repeat([]byte{3}, 1120), ct: bytes.Repeat([]byte{4}, 48)}
	sbBytes, err := sb.encode()
	if err != nil {
		t.Fatal(err)
	}
	plain := superblock{version: FormatVersion, blocks: 1, depth: 1}
	plainBytes, _ := plain.encode()
	leaf := make([]leafEntry, leafEntries)
	leaf[3] = leafEntry{flags: flagMapped | flagSlot}
	leaf[3].nonce[11] = 1
	leaf[3].tag[0] = 0xff
	leaf[4] = leafEntry{flags: flagSlot}
	leafBytes := make([]byte, BlockSize)
	encodeLeaf(leafBytes, leaf)
	inner := make([]nodeEntry, nodeFanout)
	inner[1] = nodeEntry{flags: flagMapped}
	inner[1].hash[31] = 1
	innerBytes := make([]byte, BlockSize)
	encodeInner(innerBytes, inner)
	seeds := map[string][][]byte{
		"FuzzDecodeSuperblock": {sbBytes, plainBytes, sbBytes[:100]},
		"FuzzDecodeLeaf":       {leafBytes, make([]byte, BlockSize)},
		"FuzzDecodeInner":      {innerBytes, make([]byte, BlockSize)},
	}
	for name, list := range seeds {
		dir := filepath.Join("testdata", "fuzz", name)
		for i, b := range list {
			path := filepath.Join(dir, fmt.Sprintf("seed-%d", i))
			if os.Getenv("STORAGE_WRITE_SEEDS") == "1" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)), 0o644); err != nil {
					t.Fatal(err)
				}
			} else if _, err := os.Stat(path); err != nil {
				t.Errorf("seed corpus missing (run with STORAGE_WRITE_SEEDS=1): %v", err)
			}
		}
	}
}
