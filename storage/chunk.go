package storage

import (
	"runtime"
	"sync"
)

// maxChunk is how many blocks one internal I/O step covers (1 MiB).
const maxChunk = 256

// chunkBlocks returns the blocks [b0, b1) covering the bytes from pos up to
// end, at most maxChunk of them: ReadAt and WriteAt work in such chunks.
func chunkBlocks(pos, end int64) (b0, b1 uint64) {
	b0 = uint64(pos / BlockSize)
	b1 = uint64((end + BlockSize - 1) / BlockSize)
	return b0, min(b1, b0+maxChunk)
}

// eachChunk hands the len(p) bytes at off to span a chunk (see chunkBlocks)
// at a time, in order, with the part of p from pos on, and returns how many
// bytes span took in all: up to and including the call that failed, whose
// error it returns.
func eachChunk(p []byte, off int64, span func(p []byte, pos int64, b0, b1 uint64) (int, error)) (int, error) {
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b0, b1 := chunkBlocks(pos, off+int64(len(p)))
		m, err := span(p[n:], pos, b0, b1)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Scratch buffers come from two pools so that 4 KiB requests do not
// allocate (and zero) 1 MiB buffers whenever the GC empties the pools.
const smallBufBlocks = 4

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufBlocks*BlockSize+16); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, maxChunk*BlockSize+16); return &b }}
)

// getBuf returns a scratch buffer of at least blocks*BlockSize+16 bytes.
func getBuf(blocks int) *[]byte {
	if blocks <= smallBufBlocks {
		return smallBufs.Get().(*[]byte)
	}
	return largeBufs.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if len(*b) == smallBufBlocks*BlockSize+16 {
		smallBufs.Put(b)
	} else {
		largeBufs.Put(b)
	}
}

// parallelMin is the request size (in blocks) from which the AES-GCM work
// of one request is spread over several cores.
const parallelMin = 64

// gcmWorkers is how many goroutines share the AES-GCM work of nb blocks.
func gcmWorkers(nb int) int {
	if nb < parallelMin {
		return 1
	}
	return max(1, min(runtime.GOMAXPROCS(0), nb/(parallelMin/2)))
}

// parallelBlocks calls f on consecutive sub-ranges of [0, nb), concurrently
// when nb is large and more than one CPU is available.
func parallelBlocks(nb int, f func(k0, k1 int)) {
	w := gcmWorkers(nb)
	if w < 2 {
		f(0, nb)
		return
	}
	per := (nb + w - 1) / w
	var wg sync.WaitGroup
	for k0 := per; k0 < nb; k0 += per {
		wg.Add(1)
		go func(k0 int) {
			defer wg.Done()
			f(k0, min(k0+per, nb))
		}(k0)
	}
	f(0, per)
	wg.Wait()
}
