package appliance

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"unicode/utf8"
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
//	8   4  format version, big endian (2)
//	12  4  payload length n, big endian
//	16  8  store epoch last reported to the verifiers, big endian
//	24 32  sha256(bytes 16..24 || payload)
//	56  n  payload:
//	         16  set id (the provisioning the store belongs to)
//	          2  count c of sealed local shares, big endian (>= 1)
//	         c × (2 label length l (1..255), l label bytes (UTF-8),
//	              4 blob length b (>= 1), b sealed blob),
//	         sorted by label, each label once, nothing after
//
// An all-zero first block means "never provisioned". The checksum only
// catches accidents: the blobs are authenticated by the TPM when unsealed,
// and the epoch is advisory (the store's own rollback check is the TPM NV
// counter). Entries are sorted so that a header has one encoding.
const (
	headerVersion  = 2
	headerFixedLen = 56
	// headerVersionSingle is the format before threshold key grants: one
	// sealed local share, whose KEK derivation differs from today's.
	headerVersionSingle = 1
	maxLabelLen         = 255
)

var headerMagic = [8]byte{'E', 'M', 'B', 'H', 'D', 'R', 0, 1}

// Header errors.
var (
	// ErrNoHeader means the header region is blank: a new disk.
	ErrNoHeader = errors.New("appliance: data disk has no header (blank disk)")
	// ErrBadHeader means the header region holds something unreadable.
	ErrBadHeader = errors.New("appliance: data disk header is corrupt")
	// ErrHeaderVersion means the header is format version 1: the store was
	// provisioned before threshold key grants. Its KEK was derived from a
	// single verifier's share and cannot be derived from a k-of-n grant, so
	// the appliance halts; the store must be re-provisioned.
	ErrHeaderVersion = errors.New("appliance: data disk header is format version 1: the store was provisioned before threshold key grants and must be re-provisioned (its KEK derivation differs); see docs/appliance.md, header version 1")
)

// Header is the content of the data disk's header region.
type Header struct {
	// Epoch is the store epoch last reported to the verifiers.
	Epoch uint64
	// Sealed is the provisioning's set id and the sealed local share per
	// release.
	Sealed SealedShares
}

func headerSum(b []byte, payload []byte) [32]byte {
	h := sha256.New()
	h.Write(b[16:24])
	h.Write(payload)
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// encodePayload lays out the set id and the sealed shares, checking what
// ParseHeader would refuse.
func encodePayload(s SealedShares) ([]byte, error) {
	if len(s.ByRelease) == 0 {
		return nil, errors.New("appliance: header needs at least one sealed local share")
	}
	if len(s.ByRelease) > math.MaxUint16 {
		return nil, fmt.Errorf("appliance: %d sealed shares, at most %d", len(s.ByRelease), math.MaxUint16)
	}
	labels := slices.Sorted(maps.Keys(s.ByRelease))
	b := make([]byte, 0, 18+64*len(labels))
	b = append(b, s.Set[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(labels)))
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return nil, fmt.Errorf("appliance: %w", err)
		}
		blob := s.ByRelease[l]
		if len(blob) == 0 || int64(len(blob)) > math.MaxUint32 {
			return nil, fmt.Errorf("appliance: release %q: sealed share of %d bytes", l, len(blob))
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(l)))
		b = append(b, l...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(blob)))
		b = append(b, blob...)
	}
	return b, nil
}

func checkLabel(l string) error {
	if len(l) == 0 || len(l) > maxLabelLen || !utf8.ValidString(l) {
		return fmt.Errorf("release label %q: want 1..%d bytes of UTF-8", l, maxLabelLen)
	}
	return nil
}

// parsePayload is the inverse of encodePayload.
func parsePayload(p []byte) (SealedShares, error) {
	var s SealedShares
	bad := func(format string, a ...any) (SealedShares, error) {
		return SealedShares{}, fmt.Errorf("%w: %s", ErrBadHeader, fmt.Sprintf(format, a...))
	}
	if len(p) < 18 {
		return bad("payload of %d bytes is shorter than set id and count", len(p))
	}
	copy(s.Set[:], p)
	count := int(binary.BigEndian.Uint16(p[16:]))
	if count == 0 {
		return bad("no sealed local share")
	}
	p = p[18:]
	s.ByRelease = make(map[string][]byte, count)
	prev := ""
	for i := range count {
		if len(p) < 2 {
			return bad("entry %d: label length past the payload", i)
		}
		ll := int(binary.BigEndian.Uint16(p))
		if ll > len(p)-2 {
			return bad("entry %d: label of %d bytes past the payload", i, ll)
		}
		label := string(p[2 : 2+ll])
		p = p[2+ll:]
		if err := checkLabel(label); err != nil {
			return bad("entry %d: %v", i, err)
		}
		if i > 0 && label == prev {
			return bad("release %q listed twice", label)
		}
		if i > 0 && label < prev {
			return bad("release %q after %q: labels not sorted", label, prev)
		}
		prev = label
		if len(p) < 4 {
			return bad("release %q: blob length past the payload", label)
		}
		bl := int64(binary.BigEndian.Uint32(p))
		if bl > int64(len(p)-4) {
			return bad("release %q: blob of %d bytes past the payload", label, bl)
		}
		if bl == 0 {
			return bad("release %q: empty sealed share", label)
		}
		s.ByRelease[label] = bytes.Clone(p[4 : 4+bl])
		p = p[4+bl:]
	}
	if len(p) != 0 {
		return bad("%d bytes after the last entry", len(p))
	}
	return s, nil
}

// EncodeHeader lays out h for a header region of regionSize bytes.
func EncodeHeader(h Header, regionSize int64) ([]byte, error) {
	payload, err := encodePayload(h.Sealed)
	if err != nil {
		return nil, err
	}
	if int64(len(payload)) > regionSize-headerFixedLen {
		return nil, fmt.Errorf("appliance: %d bytes of sealed shares do not fit a %d-byte header", len(payload), regionSize)
	}
	b := make([]byte, headerFixedLen+len(payload))
	copy(b, headerMagic[:])
	binary.BigEndian.PutUint32(b[8:], headerVersion)
	binary.BigEndian.PutUint32(b[12:], uint32(len(payload)))
	binary.BigEndian.PutUint64(b[16:], h.Epoch)
	copy(b[headerFixedLen:], payload)
	sum := headerSum(b, payload)
	copy(b[24:], sum[:])
	return b, nil
}

// ParseHeader decodes a header region (or a prefix of it holding at least
// the whole header). A version-1 header is ErrHeaderVersion.
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
	switch v := binary.BigEndian.Uint32(region[8:]); v {
	case headerVersion:
	case headerVersionSingle:
		return Header{}, ErrHeaderVersion
	default:
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
	sealed, err := parsePayload(payload)
	if err != nil {
		return Header{}, err
	}
	return Header{Epoch: binary.BigEndian.Uint64(region[16:]), Sealed: sealed}, nil
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
// sealed shares. It is a no-op when the epoch is unchanged.
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

// AddSealed adds sealed local shares (release label -> blob, as in
// Renewal.Resealed) to the header, replacing blobs of the same labels and
// keeping the others, the set id and the epoch. It is a no-op when blobs
// is empty or holds nothing new.
func AddSealed(dev Device, blobs map[string][]byte, regionSize int64) error {
	if len(blobs) == 0 {
		return nil
	}
	h, err := ReadHeader(dev, regionSize)
	if err != nil {
		return err
	}
	changed := false
	for l, b := range blobs {
		if old, ok := h.Sealed.ByRelease[l]; !ok || !bytes.Equal(old, b) {
			h.Sealed.ByRelease[l] = bytes.Clone(b)
			changed = true
		}
	}
	if !changed {
		return nil
	}
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
