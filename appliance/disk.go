package appliance

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
//	16 32  sha256(payload)
//	48  n  payload: the TPM-sealed local key share blob
//
// An all-zero first block means "never provisioned". The checksum only
// catches accidents: the payload is authenticated by the TPM when unsealed.
const (
	headerVersion  = 1
	headerFixedLen = 48
)

var headerMagic = [8]byte{'E', 'M', 'B', 'H', 'D', 'R', 0, 1}

// Header errors.
var (
	// ErrNoHeader means the header region is blank: a new disk.
	ErrNoHeader = errors.New("appliance: data disk has no header (blank disk)")
	// ErrBadHeader means the header region holds something unreadable.
	ErrBadHeader = errors.New("appliance: data disk header is corrupt")
)

// EncodeHeader lays out payload in a header region of regionSize bytes.
func EncodeHeader(payload []byte, regionSize int64) ([]byte, error) {
	if int64(len(payload)) > regionSize-headerFixedLen {
		return nil, fmt.Errorf("appliance: %d-byte sealed share does not fit a %d-byte header", len(payload), regionSize)
	}
	b := make([]byte, headerFixedLen+len(payload))
	copy(b, headerMagic[:])
	binary.BigEndian.PutUint32(b[8:], headerVersion)
	binary.BigEndian.PutUint32(b[12:], uint32(len(payload)))
	sum := sha256.Sum256(payload)
	copy(b[16:], sum[:])
	copy(b[headerFixedLen:], payload)
	return b, nil
}

// ParseHeader returns the payload of an encoded header region (or a prefix
// of it holding at least the whole header).
func ParseHeader(region []byte) ([]byte, error) {
	if len(region) < headerFixedLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadHeader, len(region))
	}
	if !bytes.Equal(region[:8], headerMagic[:]) {
		if allZero(region[:min(len(region), 4096)]) {
			return nil, ErrNoHeader
		}
		return nil, fmt.Errorf("%w: bad magic", ErrBadHeader)
	}
	if v := binary.BigEndian.Uint32(region[8:]); v != headerVersion {
		return nil, fmt.Errorf("%w: version %d", ErrBadHeader, v)
	}
	n := int64(binary.BigEndian.Uint32(region[12:]))
	if n > int64(len(region)-headerFixedLen) {
		return nil, fmt.Errorf("%w: payload length %d exceeds the region", ErrBadHeader, n)
	}
	payload := region[headerFixedLen : headerFixedLen+n]
	if sum := sha256.Sum256(payload); !bytes.Equal(sum[:], region[16:48]) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrBadHeader)
	}
	return bytes.Clone(payload), nil
}

// ReadHeader reads and parses the header region of dev.
func ReadHeader(dev io.ReaderAt, regionSize int64) ([]byte, error) {
	region := make([]byte, regionSize)
	if _, err := dev.ReadAt(region, 0); err != nil {
		return nil, fmt.Errorf("appliance: reading data disk header: %w", err)
	}
	return ParseHeader(region)
}

// WriteHeader writes payload into the header region of dev and syncs it.
func WriteHeader(dev Device, payload []byte, regionSize int64) error {
	b, err := EncodeHeader(payload, regionSize)
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

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
