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
	g.bufs.New = func() any { b := make([]byte, storage.BlockSize+52); return &b }
	pt := make([]byte, storage.BlockSize)
	for i := range benchSealed {
		var nonce [12]byte
		var ad [24]byte
		binary.BigEndian.PutUint64(ad[16:], uint64(i))
		g.sealed = append(g.sealed, aead.Seal(nil, nonce[:], pt, ad[:]))
	}
	return g, nil
}

// ReadAt opens the blocks p covers from sealed into p.
func (g *gcmCeiling) ReadAt(p []byte, off int64) (int, error) {
	return len(p), g.run(p, off, false)
}

// WriteAt seals the blocks of p into scratch.
func (g *gcmCeiling) WriteAt(p []byte, off int64) (int, error) {
	return len(p), g.run(p, off, true)
}

func (g *gcmCeiling) run(p []byte, off int64, seal bool) error {
	nb := len(p) / storage.BlockSize
	if nb < storage.ParallelMin { // like the store: no goroutines, no allocations
		return g.blocks(p, off/storage.BlockSize, 0, nb, seal)
	}
	var mu sync.Mutex
	var err error
	storage.ParallelBlocks(nb, func(k0, k1 int) {
		if e := g.blocks(p, off/storage.BlockSize, k0, k1, seal); e != nil {
			mu.Lock()
			err = e
			mu.Unlock()
		}
	})
	return err
}

// blocks seals or opens blocks [k0, k1) of p (block b0+k at p's block k).
func (g *gcmCeiling) blocks(p []byte, b0 int64, k0, k1 int, seal bool) error {
	// Nonce and associated data live in the pooled buffer: as locals they
	// would escape through the AEAD interface and allocate.
	bp := g.bufs.Get().(*[]byte)
	defer g.bufs.Put(bp)
	ct := (*bp)[:storage.BlockSize+16]
	nonce := (*bp)[storage.BlockSize+16 : storage.BlockSize+28]
	ad := (*bp)[storage.BlockSize+28 : storage.BlockSize+52]
	for k := k0; k < k1; k++ {
		blk := p[k*storage.BlockSize : (k+1)*storage.BlockSize]
		if seal {
			binary.BigEndian.PutUint64(nonce[4:], uint64(b0)+uint64(k))
			binary.BigEndian.PutUint64(ad[16:], uint64(b0)+uint64(k))
			g.aead.Seal(ct[:0], nonce, blk, ad)
			continue
		}
		i := int((b0 + int64(k)) % benchSealed)
		clear(nonce)
		binary.BigEndian.PutUint64(ad[16:], uint64(i))
		if _, err := g.aead.Open(blk[:0], nonce, g.sealed[i], ad); err != nil {
			return err
		}
	}
	return nil
}
