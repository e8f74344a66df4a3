package storage_test

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"sync"

	"github.com/dataembassy/embassy/storage"
)

// gcmCeiling is the pure AES-256-GCM cost of what the store does per
// request: per-4-KiB-block seal (writes) or open (reads) with a 12-byte
// nonce and 24 bytes of associated data, spread over cores as the store
// spreads large requests, with no I/O and no metadata. It is the ceiling
// for any store that authenticates each block with AES-GCM on this
// machine.
type gcmCeiling struct {
	aead cipher.AEAD
	// sealed holds benchSealed blocks of ciphertext||tag, which reads
	// open in turn (the offset picks which).
	sealed [][]byte
	bufs   sync.Pool
}

const benchSealed = 256

func newGCMCeiling() (*gcmCeiling, error) {
	blk, err := aes.NewCipher(testKEK[:32])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	g := &gcmCeiling{aead: aead}
	g.bufs.New = func() any { b := make([]byte, storage.BlockSize+16); return &b }
	pt := make([]byte, storage.BlockSize)
	for i := range benchSealed {
		var nonce [12]byte
		var ad [24]byte
		binary.BigEndian.PutUint64(ad[16:], uint64(i))
		g.sealed = append(g.sealed, aead.Seal(nil, nonce[:], pt, ad[:]))
	}
	return g, nil
}

func (g *gcmCeiling) ReadAt(p []byte, off int64) (int, error) {
	b0 := off / storage.BlockSize
	var err error
	var mu sync.Mutex
	storage.ParallelBlocks(len(p)/storage.BlockSize, func(k0, k1 int) {
		var nonce [12]byte
		var ad [24]byte
		for k := k0; k < k1; k++ {
			i := int((b0 + int64(k)) % benchSealed)
			binary.BigEndian.PutUint64(ad[16:], uint64(i))
			if _, e := g.aead.Open(p[k*storage.BlockSize:k*storage.BlockSize], nonce[:], g.sealed[i], ad[:]); e != nil {
				mu.Lock()
				err = e
				mu.Unlock()
			}
		}
	})
	return len(p), err
}

func (g *gcmCeiling) WriteAt(p []byte, off int64) (int, error) {
	b0 := off / storage.BlockSize
	storage.ParallelBlocks(len(p)/storage.BlockSize, func(k0, k1 int) {
		bp := g.bufs.Get().(*[]byte)
		defer g.bufs.Put(bp)
		var nonce [12]byte
		var ad [24]byte
		for k := k0; k < k1; k++ {
			binary.BigEndian.PutUint64(nonce[4:], uint64(b0)+uint64(k))
			binary.BigEndian.PutUint64(ad[16:], uint64(b0)+uint64(k))
			g.aead.Seal((*bp)[:0], nonce[:], p[k*storage.BlockSize:(k+1)*storage.BlockSize], ad[:])
		}
	})
	return len(p), nil
}
