package storage

import (
	"encoding/hex"
	"fmt"
)

// Info describes a store's header, for operators and tools.
type Info struct {
	// Copy is the superblock copy (0 or 1) this describes.
	Copy int `json:"copy"`
	// Authenticated is true when the header's MAC was checked with the
	// store's key; Inspect cannot, so its results are only claims.
	Authenticated bool   `json:"authenticated"`
	Version       uint32 `json:"version"`
	UUID          string `json:"uuid"`
	// Size is the logical size in bytes; Blocks the number of data blocks.
	Size   int64  `json:"size"`
	Blocks uint64 `json:"blocks"`
	// TreeDepth counts metadata levels, leaves included.
	TreeDepth int `json:"tree_depth"`
	// Epoch is the commit epoch; Counter the monotonic-counter value the
	// store is bound to.
	Epoch   uint64 `json:"epoch"`
	Counter uint64 `json:"counter"`
	// KEKSlot and RecoverySlot say which key slots are filled;
	// RecoveryKEM is the recovery slot's HPKE KEM identifier.
	KEKSlot      bool   `json:"kek_slot"`
	RecoverySlot bool   `json:"recovery_slot"`
	RecoveryKEM  uint16 `json:"recovery_kem,omitempty"`
	// LayoutBytes is how much of the device the layout uses.
	LayoutBytes int64 `json:"layout_bytes"`
}

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func infoOf(sb *superblock, copyIdx int, authenticated bool) Info {
	g, _ := newGeometry(sb.blocks)
	return Info{
		Copy: copyIdx, Authenticated: authenticated, Version: sb.version,
		UUID: formatUUID(sb.uuid), Size: int64(sb.blocks) * BlockSize, Blocks: sb.blocks,
		TreeDepth: int(sb.depth), Epoch: sb.epoch, Counter: sb.counter,
		KEKSlot: sb.kekSlot.present, RecoverySlot: sb.recSlot.present(), RecoveryKEM: sb.recSlot.kem,
		LayoutBytes: int64(g.total) * BlockSize,
	}
}

// Info describes the committed superblock of the open store.
func (s *Store) Info() Info {
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	return infoOf(&s.sb, int(s.sb.epoch%sbCopies), true)
}

// Inspect decodes both superblock copies of dev without any key. Nothing
// in the result is authenticated. Copies that do not decode are left out
// of infos and described in errs.
func Inspect(dev Device) (infos []Info, errs []error, err error) {
	buf := make([]byte, BlockSize)
	for c := 0; c < sbCopies; c++ {
		if _, err := dev.ReadAt(buf, int64(c)*BlockSize); err != nil {
			return nil, nil, fmt.Errorf("storage: read superblock %d: %w", c, err)
		}
		sb, derr := decodeSuperblock(buf)
		if derr != nil {
			errs = append(errs, fmt.Errorf("superblock copy %d: %w", c, derr))
			continue
		}
		infos = append(infos, infoOf(sb, c, false))
	}
	return infos, errs, nil
}
