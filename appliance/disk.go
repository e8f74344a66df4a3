package appliance

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Device is a block device or image: what the store is written to. It has
// the same method set as storage.Device.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes completed writes durable.
	Sync() error
	// Size returns the size in bytes.
	Size() (int64, error)
}

// Window is the part of a Device from Offset on (Length bytes; 0 means to the
// end): the data disk minus its header region is the store's device.
type Window struct {
	Dev    Device
	Offset int64
	Length int64
}

// ErrOutOfRange reports an access outside a Window.
var ErrOutOfRange = errors.New("appliance: access outside the device window")

// NewWindow returns the window of dev starting at offset and running to the
// end of dev.
func NewWindow(dev Device, offset int64) (*Window, error) {
	size, err := dev.Size()
	if err != nil {
		return nil, fmt.Errorf("appliance: sizing data disk: %w", err)
	}
	if offset < 0 || offset >= size {
		return nil, fmt.Errorf("appliance: data disk of %d bytes has no room after a %d-byte header", size, offset)
	}
	return &Window{Dev: dev, Offset: offset, Length: size - offset}, nil
}

func (w *Window) check(off int64, n int) error {
	if off < 0 || n < 0 || off > w.Length || int64(n) > w.Length-off {
		return fmt.Errorf("%w: %d bytes at %d in a %d-byte window", ErrOutOfRange, n, off, w.Length)
	}
	return nil
}

// BackingFile returns the file under the window and the window's offset in
// it, so the store can map the disk (storage.FileBacked, which reads with
// pread instead when the offset is not page-aligned); nil when the device
// is not a region of a file.
func (w *Window) BackingFile() (*os.File, int64) {
	fb, ok := w.Dev.(interface{ BackingFile() (*os.File, int64) })
	if !ok {
		return nil, 0
	}
	f, off := fb.BackingFile()
	if f == nil {
		return nil, 0
	}
	return f, off + w.Offset
}

// ReadAt reads from the window.
func (w *Window) ReadAt(p []byte, off int64) (int, error) {
	if err := w.check(off, len(p)); err != nil {
		return 0, err
	}
	return w.Dev.ReadAt(p, w.Offset+off)
}

// WriteAt writes to the window.
func (w *Window) WriteAt(p []byte, off int64) (int, error) {
	if err := w.check(off, len(p)); err != nil {
		return 0, err
	}
	return w.Dev.WriteAt(p, w.Offset+off)
}

// Sync syncs the underlying device.
func (w *Window) Sync() error { return w.Dev.Sync() }

// Size is the window's length.
func (w *Window) Size() (int64, error) { return w.Length, nil }

// Header region format (docs/appliance.md, "Data disk layout"):
//
//	0   8  magic "EMBHDR\x00\x01"
//	8   4  format version, big endian (1)
//	12  4  payload length n, big endian
//	16  8  store epoch last reported to the verifier, big endian
//	24 32  sha256(bytes 16..24 || payload)
//	56  n  payload: the TPM-sealed local key share blob
//
// An all-zero first block means "never provisioned". The checksum only
// catches accidents: the payload is authenticated by the TPM when unsealed,
// and the epoch is advisory (the store's own rollback check is the TPM NV
// counter).
const (
	headerVersion  = 1
	headerFixedLen = 56
)

var headerMagic = [8]byte{'E', 'M', 'B', 'H', 'D', 'R', 0, 1}

// Header errors.
var (
	// ErrNoHeader means the header region is blank: a new disk.
	ErrNoHeader = errors.New("appliance: data disk has no header (blank disk)")
	// ErrBadHeader means the header region holds something unreadable.
	ErrBadHeader = errors.New("appliance: data disk header is corrupt")
)

// Header is the content of the data disk's header region.
type Header struct {
	// Epoch is the store epoch last reported to the verifier.
	Epoch uint64
	// SealedLocal is the TPM-sealed local key share.
	SealedLocal []byte
}

func headerSum(b []byte, payload []byte) [32]byte {
	h := sha256.New()
	h.Write(b[16:24])
	h.Write(payload)
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// EncodeHeader lays out h for a header region of regionSize bytes.
func EncodeHeader(h Header, regionSize int64) ([]byte, error) {
	if int64(len(h.SealedLocal)) > regionSize-headerFixedLen {
		return nil, fmt.Errorf("appliance: %d-byte sealed share does not fit a %d-byte header", len(h.SealedLocal), regionSize)
	}
	b := make([]byte, headerFixedLen+len(h.SealedLocal))
	copy(b, headerMagic[:])
	binary.BigEndian.PutUint32(b[8:], headerVersion)
	binary.BigEndian.PutUint32(b[12:], uint32(len(h.SealedLocal)))
	binary.BigEndian.PutUint64(b[16:], h.Epoch)
	copy(b[headerFixedLen:], h.SealedLocal)
	sum := headerSum(b, h.SealedLocal)
	copy(b[24:], sum[:])
	return b, nil
}

// ParseHeader decodes a header region (or a prefix of it holding at least
// the whole header).
func ParseHeader(region []byte) (Header, error) {
	if len(region) < headerFixedLen {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrBadHeader, len(region))
	}
	if !bytes.Equal(region[:8], headerMagic[:]) {
		if allZero(region[:min(len(region), 4096)]) {
			return Header{}, ErrNoHeader
		}
		return Header{}, fmt.Errorf("%w: bad magic", ErrBadHeader)
	}
	if v := binary.BigEndian.Uint32(region[8:]); v != headerVersion {
		return Header{}, fmt.Errorf("%w: version %d", ErrBadHeader, v)
	}
	n := int64(binary.BigEndian.Uint32(region[12:]))
	if n > int64(len(region)-headerFixedLen) {
		return Header{}, fmt.Errorf("%w: payload length %d exceeds the region", ErrBadHeader, n)
	}
	payload := region[headerFixedLen : headerFixedLen+n]
	if sum := headerSum(region, payload); !bytes.Equal(sum[:], region[24:56]) {
		return Header{}, fmt.Errorf("%w: checksum mismatch", ErrBadHeader)
	}
	return Header{Epoch: binary.BigEndian.Uint64(region[16:]), SealedLocal: bytes.Clone(payload)}, nil
}

// ReadHeader reads and parses the header region of dev.
func ReadHeader(dev io.ReaderAt, regionSize int64) (Header, error) {
	region := make([]byte, regionSize)
	if _, err := dev.ReadAt(region, 0); err != nil {
		return Header{}, fmt.Errorf("appliance: reading data disk header: %w", err)
	}
	return ParseHeader(region)
}

// WriteHeader writes h into the header region of dev and syncs it.
func WriteHeader(dev Device, h Header, regionSize int64) error {
	b, err := EncodeHeader(h, regionSize)
	if err != nil {
		return err
	}
	if _, err := dev.WriteAt(b, 0); err != nil {
		return fmt.Errorf("appliance: writing data disk header: %w", err)
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("appliance: syncing data disk header: %w", err)
	}
	return nil
}

// UpdateHeaderEpoch rewrites the header with a new epoch, keeping the
// sealed share. It is a no-op when the epoch is unchanged.
func UpdateHeaderEpoch(dev Device, epoch uint64, regionSize int64) error {
	h, err := ReadHeader(dev, regionSize)
	if err != nil {
		return err
	}
	if h.Epoch == epoch {
		return nil
	}
	h.Epoch = epoch
	return WriteHeader(dev, h, regionSize)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
