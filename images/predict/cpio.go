package predict

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrInitramfs reports an initramfs InitramfsPCR cannot read: not a gzip
// or plain newc cpio archive, malformed, or without a regular appliance
// binary and configuration at their initramfs paths.
var ErrInitramfs = errors.New("predict: initramfs")

// maxInitramfs bounds the decompressed archive InitramfsPCR reads.
const maxInitramfs = 1 << 30

// cpioFiles returns the contents of the regular files named in want (paths
// without a leading slash) from a gzip or plain newc archive; every one
// must be present exactly once.
func cpioFiles(initrd []byte, want ...string) (map[string][]byte, error) {
	archive := initrd
	if len(initrd) >= 2 && initrd[0] == 0x1f && initrd[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(initrd))
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %v", ErrInitramfs, err)
		}
		zr.Multistream(false)
		b, err := io.ReadAll(io.LimitReader(zr, maxInitramfs+1))
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %v", ErrInitramfs, err)
		}
		if len(b) > maxInitramfs {
			return nil, fmt.Errorf("%w: more than %d bytes decompressed", ErrInitramfs, maxInitramfs)
		}
		archive = b
	}
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w] = true
	}
	got := map[string][]byte{}
	off := 0
	for {
		// newc header: magic and 13 eight-digit hex fields (110 bytes).
		const hdrLen = 110
		if len(archive)-off < hdrLen {
			return nil, fmt.Errorf("%w: truncated cpio header at %d", ErrInitramfs, off)
		}
		h := archive[off : off+hdrLen]
		if m := string(h[:6]); m != "070701" && m != "070702" {
			return nil, fmt.Errorf("%w: no newc cpio magic at %d", ErrInitramfs, off)
		}
		field := func(i int) (int, error) {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			return int(v), err
		}
		mode, err1 := field(1)
		size, err2 := field(6)
		nameLen, err3 := field(11)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("%w: cpio header at %d: %v", ErrInitramfs, off, err)
		}
		nameEnd := off + hdrLen + nameLen
		if nameLen == 0 || nameEnd > len(archive) || archive[nameEnd-1] != 0 {
			return nil, fmt.Errorf("%w: bad cpio name at %d", ErrInitramfs, off)
		}
		name := string(archive[off+hdrLen : nameEnd-1])
		dataStart := align4(nameEnd)
		if dataStart > len(archive) || size > len(archive)-dataStart {
			return nil, fmt.Errorf("%w: truncated cpio entry %q", ErrInitramfs, name)
		}
		if name == "TRAILER!!!" {
			break
		}
		name = strings.TrimLeft(strings.TrimPrefix(name, "./"), "/")
		if wanted[name] {
			if _, dup := got[name]; dup {
				return nil, fmt.Errorf("%w: %s occurs twice", ErrInitramfs, name)
			}
			if mode&0o170000 != 0o100000 {
				return nil, fmt.Errorf("%w: %s is not a regular file (mode %o)", ErrInitramfs, name, mode)
			}
			got[name] = archive[dataStart : dataStart+size]
		}
		off = align4(dataStart + size)
	}
	for _, w := range want {
		if _, ok := got[w]; !ok {
			return nil, fmt.Errorf("%w: no %s", ErrInitramfs, w)
		}
	}
	return got, nil
}

func align4(n int) int { return (n + 3) &^ 3 }
