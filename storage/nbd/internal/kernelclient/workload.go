package kernelclient

import (
	"fmt"
	"hash/fnv"
)

// Kind is what one step of the workload does to the device.
type Kind int

const (
	// DirectWrite writes Pattern with O_DIRECT in IO-sized requests.
	DirectWrite Kind = iota + 1
	// BufferedWrite writes Pattern through the page cache in IO-sized
	// pieces (not aligned: the kernel writes back whole pages).
	BufferedWrite
	// Sync is fsync on the device: the kernel sends NBD_CMD_FLUSH.
	Sync
	// Discard is the BLKDISCARD ioctl: the kernel sends NBD_CMD_TRIM.
	Discard
)

// Step is one step of the workload.
type Step struct {
	// Name labels the step in the guest's result lines.
	Name string
	// Kind is the operation.
	Kind Kind
	// Off and Len are the byte range (unused for Sync).
	Off, Len int64
	// IO is the size of each write request.
	IO int
	// Interleave issues the odd-numbered requests first, then the even
	// ones, so that sub-block writes hit each 4 KiB store block several
	// times, apart (read-modify-write must keep the earlier ones).
	Interleave bool
	// DSync opens the device O_DSYNC too (DirectWrite only): each write
	// must be durable when it returns, so the kernel sets FUA on it (or
	// follows it with a flush).
	DSync bool
}

// MinSize is the smallest export Plan supports.
const MinSize = 8 << 20

// Plan is the workload for an export of size bytes (at least MinSize):
// 512-byte, 4 KiB and 1 MiB O_DIRECT writes, 4 KiB O_DIRECT|O_DSYNC
// writes, buffered writes of odd sizes
// at an odd offset, fsync, a discard in the middle of the 1 MiB region,
// and a final fsync. Everything outside the written ranges stays as it was
// (zeros on a fresh export).
func Plan(size int64) ([]Step, error) {
	if size < MinSize {
		return nil, fmt.Errorf("kernelclient: export of %d bytes, need at least %d", size, MinSize)
	}
	const MiB = 1 << 20
	return []Step{
		{Name: "direct512", Kind: DirectWrite, Off: 0, Len: 64 << 10, IO: 512, Interleave: true},
		{Name: "direct4k", Kind: DirectWrite, Off: 1 * MiB, Len: 256 << 10, IO: 4096},
		{Name: "direct1m", Kind: DirectWrite, Off: 2 * MiB, Len: 2 * MiB, IO: MiB},
		{Name: "dsync4k", Kind: DirectWrite, Off: 6 * MiB, Len: 64 << 10, IO: 4096, DSync: true},
		{Name: "buffered", Kind: BufferedWrite, Off: 5*MiB + 700, Len: 300000, IO: 3000},
		{Name: "fsync", Kind: Sync},
		{Name: "discard", Kind: Discard, Off: 2*MiB + 256<<10, Len: 512 << 10},
		{Name: "fsync2", Kind: Sync},
	}, nil
}

// Seed derives a workload seed from an export name, so that two exports
// written by the same guest hold different bytes.
func Seed(export string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(export))
	return h.Sum64()
}

// Pattern fills p with the bytes the workload writes at device offset off:
// a function of the absolute offset and seed, so every 512-byte sector of
// the device holds different bytes and misplaced data is caught.
func Pattern(seed uint64, off int64, p []byte) {
	for i := range p {
		x := (uint64(off+int64(i)) + seed) * 0x9e3779b97f4a7c15
		x ^= x >> 29
		p[i] = byte(x >> 24)
	}
}

// Expected is the device content after Plan on a zero-filled device of
// size bytes.
func Expected(seed uint64, size int64) ([]byte, error) {
	steps, err := Plan(size)
	if err != nil {
		return nil, err
	}
	img := make([]byte, size)
	for _, s := range steps {
		switch s.Kind {
		case DirectWrite, BufferedWrite:
			Pattern(seed, s.Off, img[s.Off:s.Off+s.Len])
		case Discard:
			clear(img[s.Off : s.Off+s.Len])
		}
	}
	return img, nil
}

// Requests splits a write step into its (offset, length) requests in
// issue order.
func (s Step) Requests() [][2]int64 {
	var reqs [][2]int64
	for o := s.Off; o < s.Off+s.Len; o += int64(s.IO) {
		reqs = append(reqs, [2]int64{o, min(int64(s.IO), s.Off+s.Len-o)})
	}
	if !s.Interleave {
		return reqs
	}
	var odd, even [][2]int64
	for i, r := range reqs {
		if i%2 == 1 {
			odd = append(odd, r)
		} else {
			even = append(even, r)
		}
	}
	return append(odd, even...)
}
