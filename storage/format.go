package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// On-disk format constants. docs/storage-format.md describes every field.
const (
	// FormatVersion is the on-disk format version written by Format.
	FormatVersion = 1

	leafEntries  = 128 // 32-byte entries per leaf metadata block
	leafEntrySz  = 32
	nodeFanout   = 64 // 64-byte child entries per inner metadata block
	nodeEntrySz  = 64
	sbCopies     = 2
	sbMACOffset  = BlockSize - 32
	sbRecOffset  = 216
	sbRecMax     = sbMACOffset - sbRecOffset
	maxBlocks    = 1 << 36 // 256 TiB of logical blocks
	dataKeyLen   = 32
	kekSlotCTLen = dataKeyLen + 16
)

var sbMagic = [8]byte{'E', 'M', 'B', 'S', 'T', 'O', 'R', 0}

// Entry flag bits.
const (
	flagMapped  = 1 << 0 // leaf: block holds data; inner: child is present on disk
	flagSlot    = 1 << 1 // which of the two physical slots holds the version
	flagAllowed = flagMapped | flagSlot
)

// ErrFormat reports bytes that are not a valid store structure (wrong magic,
// unsupported version, inconsistent geometry, reserved bits set).
var ErrFormat = errors.New("storage: malformed on-disk structure")

// geometry is the layout derived from the number of logical blocks.
type geometry struct {
	blocks   uint64   // logical data blocks
	levels   []uint64 // node count per level; levels[0] are leaves, the last is the root (1)
	metaBase []uint64 // first physical block of each level's node pairs
	dataBase [2]uint64
	total    uint64 // physical blocks needed
}

func newGeometry(blocks uint64) (geometry, error) {
	if blocks == 0 || blocks > maxBlocks {
		return geometry{}, fmt.Errorf("%w: %d blocks out of range", ErrFormat, blocks)
	}
	g := geometry{blocks: blocks}
	n := (blocks + leafEntries - 1) / leafEntries
	g.levels = append(g.levels, n)
	for n > 1 {
		n = (n + nodeFanout - 1) / nodeFanout
		g.levels = append(g.levels, n)
	}
	pos := uint64(sbCopies)
	for _, c := range g.levels {
		g.metaBase = append(g.metaBase, pos)
		pos += 2 * c
	}
	g.dataBase[0] = pos
	g.dataBase[1] = pos + blocks
	g.total = pos + 2*blocks
	return g, nil
}

func (g geometry) depth() int { return len(g.levels) }

// nodeBlock returns the physical block of node (level, index) in slot s.
func (g geometry) nodeBlock(level int, index uint64, slot int) uint64 {
	return g.metaBase[level] + 2*index + uint64(slot)
}

// dataBlock returns the physical block of logical block i in slot s.
func (g geometry) dataBlock(i uint64, slot int) uint64 { return g.dataBase[slot] + i }

// leafSpan is how many leaves a node at level l covers.
func leafSpan(level int) uint64 {
	s := uint64(1)
	for i := 0; i < level; i++ {
		s *= nodeFanout
	}
	return s
}

// blocksFitting returns the largest logical block count whose layout fits
// in devBlocks physical blocks.
func blocksFitting(devBlocks uint64) uint64 {
	lo, hi := uint64(0), devBlocks/2+1
	if hi > maxBlocks+1 {
		hi = maxBlocks + 1
	}
	for lo+1 < hi {
		mid := (lo + hi) / 2
		g, err := newGeometry(mid)
		if err == nil && g.total <= devBlocks {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// leafEntry is one data block's metadata: 32 bytes on disk.
type leafEntry struct {
	flags byte
	nonce [12]byte
	tag   [16]byte
}

func (e *leafEntry) mapped() bool { return e.flags&flagMapped != 0 }
func (e *leafEntry) slot() int    { return int(e.flags&flagSlot) >> 1 }

// nodeEntry is one child's reference in an inner node (or the superblock's
// root reference): 64 bytes on disk.
type nodeEntry struct {
	hash  [32]byte
	flags byte
}

func (e *nodeEntry) present() bool { return e.flags&flagMapped != 0 }
func (e *nodeEntry) slot() int     { return int(e.flags&flagSlot) >> 1 }

func encodeNodeEntry(b []byte, e *nodeEntry) {
	copy(b[:32], e.hash[:])
	b[32] = e.flags
	clear(b[33:nodeEntrySz])
}

func decodeNodeEntry(b []byte) (nodeEntry, error) {
	var e nodeEntry
	copy(e.hash[:], b[:32])
	e.flags = b[32]
	if e.flags&^flagAllowed != 0 || !allZero(b[33:nodeEntrySz]) {
		return e, fmt.Errorf("%w: bad node entry", ErrFormat)
	}
	if !e.present() && (e.flags != 0 || !allZero(e.hash[:])) {
		return e, fmt.Errorf("%w: absent node entry not zero", ErrFormat)
	}
	return e, nil
}

// encodeLeaf writes a leaf block.
func encodeLeaf(b []byte, es []leafEntry) {
	for i := range es {
		o := b[i*leafEntrySz : (i+1)*leafEntrySz]
		o[0] = es[i].flags
		o[1], o[2], o[3] = 0, 0, 0
		copy(o[4:16], es[i].nonce[:])
		copy(o[16:32], es[i].tag[:])
	}
}

// decodeLeaf parses a leaf metadata block. Decoding is canonical: what
// decodes re-encodes to the same bytes (FuzzDecodeLeaf checks it).
func decodeLeaf(b []byte) ([]leafEntry, error) {
	if len(b) != BlockSize {
		return nil, fmt.Errorf("%w: leaf is %d bytes", ErrFormat, len(b))
	}
	es := make([]leafEntry, leafEntries)
	for i := range es {
		o := b[i*leafEntrySz : (i+1)*leafEntrySz]
		if o[0]&^flagAllowed != 0 || o[1]|o[2]|o[3] != 0 {
			return nil, fmt.Errorf("%w: leaf entry %d has reserved bits set", ErrFormat, i)
		}
		es[i].flags = o[0]
		copy(es[i].nonce[:], o[4:16])
		copy(es[i].tag[:], o[16:32])
		if !es[i].mapped() && !allZero(o[4:32]) {
			return nil, fmt.Errorf("%w: unmapped leaf entry %d not zero", ErrFormat, i)
		}
	}
	return es, nil
}

func encodeInner(b []byte, es []nodeEntry) {
	for i := range es {
		encodeNodeEntry(b[i*nodeEntrySz:], &es[i])
	}
}

func decodeInner(b []byte) ([]nodeEntry, error) {
	if len(b) != BlockSize {
		return nil, fmt.Errorf("%w: inner node is %d bytes", ErrFormat, len(b))
	}
	es := make([]nodeEntry, nodeFanout)
	for i := range es {
		e, err := decodeNodeEntry(b[i*nodeEntrySz:])
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		es[i] = e
	}
	return es, nil
}

// nodeHash binds a metadata block's contents to its position in the tree.
func nodeHash(level int, index uint64, block []byte) [32]byte {
	h := sha256.New()
	var hdr [24]byte
	copy(hdr[:12], "embassy-node")
	hdr[12] = byte(level)
	binary.BigEndian.PutUint64(hdr[16:], index)
	h.Write(hdr[:])
	h.Write(block)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// superblock is the decoded header. Byte offsets are in docs/storage-format.md.
type superblock struct {
	version  uint32
	uuid     [16]byte
	blocks   uint64
	depth    uint32
	epoch    uint64
	counter  uint64
	nonceRes uint64 // every nonce below this may have been used
	root     nodeEntry
	kekSlot  kekSlot
	recSlot  recoverySlot
	mac      [32]byte
}

type kekSlot struct {
	present bool
	nonce   [12]byte
	ct      [kekSlotCTLen]byte
}

type recoverySlot struct {
	kem, kdf, aead uint16
	enc, ct        []byte
}

func (r *recoverySlot) present() bool { return r.kem != 0 }

// encode returns the superblock's BlockSize bytes, with sb.mac in the MAC
// field (writeSuperblock computes the MAC over the rest and fills it in).
func (sb *superblock) encode() ([]byte, error) {
	b := make([]byte, BlockSize)
	copy(b[0:8], sbMagic[:])
	binary.BigEndian.PutUint32(b[8:], sb.version)
	copy(b[16:32], sb.uuid[:])
	binary.BigEndian.PutUint64(b[32:], sb.blocks)
	binary.BigEndian.PutUint32(b[40:], sb.depth)
	binary.BigEndian.PutUint64(b[48:], sb.epoch)
	binary.BigEndian.PutUint64(b[56:], sb.counter)
	binary.BigEndian.PutUint64(b[64:], sb.nonceRes)
	encodeNodeEntry(b[72:136], &sb.root)
	if sb.kekSlot.present {
		b[136] = 1
		copy(b[140:152], sb.kekSlot.nonce[:])
		copy(b[152:200], sb.kekSlot.ct[:])
	}
	r := &sb.recSlot
	if r.present() {
		if len(r.enc)+len(r.ct) > sbRecMax || len(r.enc) > 0xffff || len(r.ct) > 0xffff {
			return nil, fmt.Errorf("storage: recovery slot too large")
		}
		binary.BigEndian.PutUint16(b[200:], r.kem)
		binary.BigEndian.PutUint16(b[202:], r.kdf)
		binary.BigEndian.PutUint16(b[204:], r.aead)
		binary.BigEndian.PutUint16(b[206:], uint16(len(r.enc)))
		binary.BigEndian.PutUint16(b[208:], uint16(len(r.ct)))
		copy(b[sbRecOffset:], r.enc)
		copy(b[sbRecOffset+len(r.enc):], r.ct)
	}
	copy(b[sbMACOffset:], sb.mac[:])
	return b, nil
}

// decodeSuperblock parses a superblock's structure. It does not check the
// MAC (that needs the DEK); callers must before trusting any field.
func decodeSuperblock(b []byte) (*superblock, error) {
	if len(b) != BlockSize {
		return nil, fmt.Errorf("%w: superblock is %d bytes", ErrFormat, len(b))
	}
	if !bytes.Equal(b[0:8], sbMagic[:]) {
		return nil, fmt.Errorf("%w: bad superblock magic", ErrFormat)
	}
	sb := &superblock{version: binary.BigEndian.Uint32(b[8:])}
	if sb.version != FormatVersion {
		return nil, fmt.Errorf("%w: unsupported format version %d", ErrFormat, sb.version)
	}
	if !allZero(b[12:16]) || !allZero(b[44:48]) || !allZero(b[137:140]) || !allZero(b[210:sbRecOffset]) {
		return nil, fmt.Errorf("%w: reserved superblock bytes set", ErrFormat)
	}
	copy(sb.uuid[:], b[16:32])
	sb.blocks = binary.BigEndian.Uint64(b[32:])
	sb.depth = binary.BigEndian.Uint32(b[40:])
	sb.epoch = binary.BigEndian.Uint64(b[48:])
	sb.counter = binary.BigEndian.Uint64(b[56:])
	sb.nonceRes = binary.BigEndian.Uint64(b[64:])
	g, err := newGeometry(sb.blocks)
	if err != nil {
		return nil, err
	}
	if uint32(g.depth()) != sb.depth {
		return nil, fmt.Errorf("%w: depth %d does not match %d blocks", ErrFormat, sb.depth, sb.blocks)
	}
	if sb.root, err = decodeNodeEntry(b[72:136]); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	switch b[136] {
	case 0:
		if !allZero(b[140:200]) {
			return nil, fmt.Errorf("%w: empty KEK slot not zero", ErrFormat)
		}
	case 1:
		sb.kekSlot.present = true
		copy(sb.kekSlot.nonce[:], b[140:152])
		copy(sb.kekSlot.ct[:], b[152:200])
	default:
		return nil, fmt.Errorf("%w: bad KEK slot flag", ErrFormat)
	}
	r := &sb.recSlot
	r.kem = binary.BigEndian.Uint16(b[200:])
	r.kdf = binary.BigEndian.Uint16(b[202:])
	r.aead = binary.BigEndian.Uint16(b[204:])
	el := int(binary.BigEndian.Uint16(b[206:]))
	cl := int(binary.BigEndian.Uint16(b[208:]))
	if el+cl > sbRecMax {
		return nil, fmt.Errorf("%w: recovery slot lengths out of range", ErrFormat)
	}
	if r.kem == 0 && (r.kdf|r.aead) != 0 || r.kem == 0 && el+cl != 0 {
		return nil, fmt.Errorf("%w: empty recovery slot not zero", ErrFormat)
	}
	r.enc = append([]byte(nil), b[sbRecOffset:sbRecOffset+el]...)
	r.ct = append([]byte(nil), b[sbRecOffset+el:sbRecOffset+el+cl]...)
	if !allZero(b[sbRecOffset+el+cl : sbMACOffset]) {
		return nil, fmt.Errorf("%w: bytes after recovery slot not zero", ErrFormat)
	}
	copy(sb.mac[:], b[sbMACOffset:])
	return sb, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
