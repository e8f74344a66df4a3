//go:build linux

package kernelclient

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Result is what Run observed.
type Result struct {
	// SHA256 is the hex sha256 of the whole device read back through the
	// page cache after dropping it (BLKFLSBUF), i.e. from the server.
	SHA256 string
	// Steps has one line per workload step and verification pass.
	Steps []string
	// Spread is the number of CPUs the O_DIRECT writes and reads were
	// issued from concurrently (one per connection, up to the CPU count).
	Spread int
}

// ErrMismatch reports that the device read back differs from Expected.
var ErrMismatch = errors.New("kernelclient: data read back differs")

// ErrExportFlags reports an export whose transmission flags do not allow
// the workload.
var ErrExportFlags = errors.New("kernelclient: export unsuitable for the workload")

// Run executes Plan on the attached device, then reads the whole device
// back (O_DIRECT in 1 MiB requests, the 512-byte region again in 512-byte
// O_DIRECT requests, and buffered after dropping the page cache) and
// compares it with Expected(seed, size). The device must start zero-filled
// and the export must advertise SEND_FLUSH and SEND_TRIM and be writable.
// progress, if not nil, receives each step's line as it completes.
func Run(d *Device, seed uint64, size int64, progress func(string)) (*Result, error) {
	steps, err := Plan(size)
	if err != nil {
		return nil, err
	}
	// The workload's fsync and discard steps only reach the server if the
	// export advertises them; without, Expected would not hold.
	if need := uint16(FlagSendFlush | FlagSendTrim); d.Flags()&need != need || d.Flags()&FlagReadOnly != 0 {
		return nil, fmt.Errorf("%w: export flags %#x, want SEND_FLUSH and SEND_TRIM, not READ_ONLY", ErrExportFlags, d.Flags())
	}
	want, err := Expected(seed, size)
	if err != nil {
		return nil, err
	}
	direct, err := os.OpenFile(d.Path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("kernelclient: O_DIRECT open: %w", err)
	}
	defer direct.Close()
	buffered := d.f
	buf, err := alignedBuf(1 << 20)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf)

	// With several connections, issue O_DIRECT I/O from several CPUs: the
	// kernel maps each CPU's requests to one connection (blk-mq hardware
	// queue), so a single-threaded workload would use only the first.
	spread := 1
	if d.Connections() > 1 && runtime.NumCPU() > 1 {
		spread = min(d.Connections(), runtime.NumCPU())
	}
	res := &Result{Spread: spread}
	note := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		res.Steps = append(res.Steps, line)
		if progress != nil {
			progress(line)
		}
	}
	note("step=start cpus=%d spread=%d", runtime.NumCPU(), spread)
	for _, s := range steps {
		start := time.Now()
		n := 0
		switch s.Kind {
		case DirectWrite, BufferedWrite:
			f := direct
			if s.Kind == BufferedWrite {
				f = buffered
			}
			if s.DSync {
				if f, err = os.OpenFile(d.Path, os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0); err != nil {
					return res, fmt.Errorf("kernelclient: step %s: O_DSYNC open: %w", s.Name, err)
				}
			}
			workers := 1
			if s.Kind == DirectWrite {
				workers = spread
			}
			reqs := s.Requests()
			err := onCPUs(workers, func(w int, buf []byte) error {
				for i := w; i < len(reqs); i += workers {
					r := reqs[i]
					p := buf[:r[1]]
					Pattern(seed, r[0], p)
					if _, err := f.WriteAt(p, r[0]); err != nil {
						return fmt.Errorf("kernelclient: step %s: write %d@%d: %w", s.Name, r[1], r[0], err)
					}
				}
				return nil
			})
			if s.DSync {
				f.Close()
			}
			if err != nil {
				return res, err
			}
			n = len(reqs)
		case Sync:
			if err := buffered.Sync(); err != nil {
				return res, fmt.Errorf("kernelclient: step %s: fsync: %w", s.Name, err)
			}
			n = 1
		case Discard:
			rng := [2]uint64{uint64(s.Off), uint64(s.Len)}
			if _, _, errno := unix.Syscall(unix.SYS_IOCTL, buffered.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng))); errno != 0 {
				return res, fmt.Errorf("kernelclient: step %s: BLKDISCARD %d@%d: %w", s.Name, s.Len, s.Off, errno)
			}
			n = 1
		}
		note("step=%s requests=%d bytes=%d ms=%d", s.Name, n, s.Len, time.Since(start).Milliseconds())
	}

	// Read back with O_DIRECT: every byte comes from the server.
	start := time.Now()
	err = onCPUs(spread, func(w int, buf []byte) error {
		for off := int64(w) * int64(len(buf)); off < size; off += int64(spread * len(buf)) {
			p := buf[:min(int64(len(buf)), size-off)]
			if _, err := direct.ReadAt(p, off); err != nil {
				return fmt.Errorf("kernelclient: O_DIRECT read %d@%d: %w", len(p), off, err)
			}
			if i := firstDiff(p, want[off:]); i >= 0 {
				return fmt.Errorf("%w: O_DIRECT 1 MiB read at byte %d", ErrMismatch, off+int64(i))
			}
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	note("step=verify-direct1m bytes=%d ms=%d", size, time.Since(start).Milliseconds())

	// Sub-block reads of the region written in 512-byte requests.
	start = time.Now()
	s0 := steps[0]
	for off := s0.Off; off < s0.Off+s0.Len; off += 512 {
		p := buf[:512]
		if _, err := direct.ReadAt(p, off); err != nil {
			return res, fmt.Errorf("kernelclient: O_DIRECT read 512@%d: %w", off, err)
		}
		if i := firstDiff(p, want[off:]); i >= 0 {
			return res, fmt.Errorf("%w: O_DIRECT 512-byte read at byte %d", ErrMismatch, off+int64(i))
		}
	}
	note("step=verify-direct512 bytes=%d ms=%d", s0.Len, time.Since(start).Milliseconds())

	// Buffered, after dropping the device's page cache.
	start = time.Now()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, buffered.Fd(), unix.BLKFLSBUF, 0); errno != 0 {
		return res, fmt.Errorf("kernelclient: BLKFLSBUF: %w", errno)
	}
	h := sha256.New()
	for off := int64(0); off < size; off += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), size-off)]
		if _, err := buffered.ReadAt(p, off); err != nil {
			return res, fmt.Errorf("kernelclient: buffered read %d@%d: %w", len(p), off, err)
		}
		if i := firstDiff(p, want[off:]); i >= 0 {
			return res, fmt.Errorf("%w: buffered read at byte %d", ErrMismatch, off+int64(i))
		}
		h.Write(p)
	}
	res.SHA256 = hex.EncodeToString(h.Sum(nil))
	note("step=verify-buffered bytes=%d ms=%d", size, time.Since(start).Milliseconds())
	return res, nil
}

// onCPUs runs f(w, buf) for w in [0, n) concurrently, each on its own OS
// thread pinned to CPU w with its own 1 MiB page-aligned buffer, and
// returns the first error.
func onCPUs(n int, f func(w int, buf []byte) error) error {
	errs := make(chan error, n)
	for w := range n {
		go func() {
			// Never unlocked: the thread, with its changed affinity, ends
			// with the goroutine instead of going back to the scheduler.
			runtime.LockOSThread()
			if n > 1 {
				var set unix.CPUSet
				set.Set(w)
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					errs <- fmt.Errorf("kernelclient: pinning to CPU %d: %w", w, err)
					return
				}
			}
			buf, err := alignedBuf(1 << 20)
			if err != nil {
				errs <- err
				return
			}
			defer unix.Munmap(buf)
			errs <- f(w, buf)
		}()
	}
	var err error
	for range n {
		err = errors.Join(err, <-errs)
	}
	return err
}

// firstDiff returns the first index where got differs from want's prefix
// of the same length, or -1.
func firstDiff(got, want []byte) int {
	want = want[:len(got)]
	if bytes.Equal(got, want) {
		return -1
	}
	for i := range got {
		if got[i] != want[i] {
			return i
		}
	}
	return -1
}

// alignedBuf returns page-aligned memory, as O_DIRECT needs.
func alignedBuf(n int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("kernelclient: mmap: %w", err)
	}
	return b, nil
}

// ReadOnlyResult is what CheckReadOnly observed.
type ReadOnlyResult struct {
	// SHA256 is the hex sha256 of the whole device, read with O_DIRECT.
	SHA256 string
	// KernelRO is the kernel's read-only flag for the disk (sysfs "ro").
	KernelRO bool
	// WriteErr is how the kernel refused a 4 KiB O_DIRECT write (nil if it
	// was accepted, which is a failure).
	WriteErr error
}

// CheckReadOnly reads the whole attached device and tries to write to it:
// on an export with NBD_FLAG_READ_ONLY the kernel must refuse.
func CheckReadOnly(d *Device, size int64) (*ReadOnlyResult, error) {
	res := &ReadOnlyResult{}
	ro, err := os.ReadFile("/sys/block/" + filepath.Base(d.Path) + "/ro")
	if err != nil {
		return nil, fmt.Errorf("kernelclient: %w", err)
	}
	res.KernelRO = strings.TrimSpace(string(ro)) == "1"
	r, err := os.OpenFile(d.Path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("kernelclient: O_DIRECT open: %w", err)
	}
	defer r.Close()
	buf, err := alignedBuf(1 << 20)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf)
	h := sha256.New()
	for off := int64(0); off < size; off += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), size-off)]
		if _, err := r.ReadAt(p, off); err != nil {
			return nil, fmt.Errorf("kernelclient: O_DIRECT read %d@%d: %w", len(p), off, err)
		}
		h.Write(p)
	}
	res.SHA256 = hex.EncodeToString(h.Sum(nil))

	w, err := os.OpenFile(d.Path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		res.WriteErr = err
		return res, nil
	}
	defer w.Close()
	_, res.WriteErr = w.WriteAt(buf[:4096], 0)
	return res, nil
}
