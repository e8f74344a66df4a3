package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from power-of-two size classes so a 4 KiB request
// does not hold a 32 MiB buffer and steady-state I/O allocates nothing.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB
)

var pools [maxClassShift - minClassShift + 1]sync.Pool

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// getBuf returns a buffer of length n.
func getBuf(n int) []byte {
	c := classOf(n)
	if c >= len(pools) {
		return make([]byte, n)
	}
	if p, ok := pools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(c+minClassShift))
}

// putBuf returns b, obtained from getBuf, to its pool.
func putBuf(b []byte) {
	if b == nil {
		return
	}
	c := classOf(cap(b))
	if c >= len(pools) || cap(b) != 1<<(c+minClassShift) {
		return
	}
	b = b[:cap(b)]
	pools[c].Put(&b)
}
