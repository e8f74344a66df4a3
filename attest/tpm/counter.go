package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// DefaultCounterIndex is the NV index of the store's rollback counter: in
// the owner range (0x01000000-0x013FFFFF), away from indexes TCG reserves.
const DefaultCounterIndex = 0x01500E00

// counterAttrs: a TPM_NT_COUNTER index, readable and incrementable with the
// (empty) index auth, exempt from dictionary-attack lockout.
const (
	ntCounter    tpm2.NVAttr = 0x00000010
	counterAttrs             = ntCounter | tpm2.AttrAuthRead | tpm2.AttrAuthWrite | tpm2.AttrNoDA
)

// ErrNotCounter reports that the NV index exists but is not a counter
// defined the way Embassy defines it.
var ErrNotCounter = errors.New("tpm: NV index is not an Embassy counter")

// NVCounter is a monotonic counter in TPM NV memory (TPM2_NV_Increment). It
// implements storage.Counter. A TPM counter never decreases, survives
// reboots, and cannot be reset short of clearing the TPM's owner hierarchy.
//
// Its first value is not necessarily 1: the TPM starts a new counter at the
// highest value any counter on it has had.
type NVCounter struct {
	mu    sync.Mutex
	rw    io.ReadWriter
	index tpmutil.Handle
}

// OpenNVCounter returns the counter at index, defining it (owner
// hierarchy, empty owner auth) and incrementing it once if it does not exist
// yet, so that it is readable.
func OpenNVCounter(rw io.ReadWriter, index uint32) (*NVCounter, error) {
	h := tpmutil.Handle(index)
	pub, err := tpm2.NVReadPublic(rw, h)
	if err != nil {
		if err := tpm2.NVDefineSpace(rw, tpm2.HandleOwner, h, "", "", nil, counterAttrs, 8); err != nil {
			return nil, fmt.Errorf("tpm: define NV counter %#x: %w", index, err)
		}
		if pub, err = tpm2.NVReadPublic(rw, h); err != nil {
			return nil, fmt.Errorf("tpm: NV counter %#x: %w", index, err)
		}
	}
	if pub.Attributes&0xF0 != ntCounter || pub.DataSize != 8 || pub.Attributes&(tpm2.AttrAuthRead|tpm2.AttrAuthWrite) != tpm2.AttrAuthRead|tpm2.AttrAuthWrite {
		return nil, fmt.Errorf("%w: %#x has attributes %v", ErrNotCounter, index, pub.Attributes)
	}
	c := &NVCounter{rw: rw, index: h}
	if pub.Attributes&tpm2.AttrWritten == 0 {
		if _, err := c.Increment(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Read returns the counter's value.
func (c *NVCounter) Read() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read()
}

func (c *NVCounter) read() (uint64, error) {
	b, err := tpm2.NVReadEx(c.rw, c.index, c.index, "", 0)
	if err != nil {
		return 0, fmt.Errorf("tpm: read NV counter %#x: %w", uint32(c.index), err)
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: counter value of %d bytes", ErrResponse, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// Increment adds one to the counter and returns the new value.
func (c *NVCounter) Increment() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := tpm2.NVIncrement(c.rw, c.index, ""); err != nil {
		return 0, fmt.Errorf("tpm: increment NV counter %#x: %w", uint32(c.index), err)
	}
	return c.read()
}
