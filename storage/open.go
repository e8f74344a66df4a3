package storage

import (
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
)

// DefaultCacheBytes is the metadata cache size used when the options leave
// it zero: 64 MiB of metadata covers 8 GiB of randomly accessed data.
const DefaultCacheBytes = 64 << 20

// FormatOptions configures Format.
type FormatOptions struct {
	// KEK wraps the new store's DEK in the KEK key slot. Required
	// (KEKSize bytes).
	KEK []byte
	// Recovery, if set, also wraps the DEK for this recovery public key
	// (see GenerateRecoveryKey), so the store can be opened offline
	// without the KEK.
	Recovery hpke.PublicKey
	// Size is the logical size in bytes, a multiple of BlockSize. Zero
	// means the largest size that fits on the device.
	Size int64
	// Counter, if set, is the monotonic counter the store is bound to;
	// the same counter must be given to Open.
	Counter Counter
	// Open configures the returned open store (its keys and Counter are
	// taken from these options).
	Open OpenOptions
}

// OpenOptions configures Open.
type OpenOptions struct {
	// KEK opens the KEK key slot. Exactly one of KEK and Recovery is needed.
	KEK []byte
	// Recovery opens the recovery key slot instead of the KEK.
	Recovery hpke.PrivateKey
	// Counter detects whole-store rollback (one counter per store: every
	// Open advances it): Open fails with ErrRollback
	// unless the superblock's counter value equals the counter (or is one
	// ahead: an Open interrupted after its commit), then advances it. Nil
	// disables the check (offline tools, recovery).
	Counter Counter
	// ReadOnly opens without writing anything: no commit at open, no
	// counter increment, and writes fail with ErrReadOnly.
	ReadOnly bool
	// CacheBytes bounds the metadata cache (dirty metadata awaiting a
	// commit included: the store commits early to stay within it). Zero
	// means DefaultCacheBytes.
	CacheBytes int64
	// Logger receives integrity failures and commit errors. Nil means
	// slog.Default().
	Logger *slog.Logger
	// NoMmap makes a store on a FileBacked device read with pread
	// instead of through memory mappings of the file (see
	// docs/storage-format.md, Memory-mapped reads).
	NoMmap bool
}

// Format creates a new, empty store on dev, destroying what dev held, and
// returns it open.
func Format(dev Device, opts FormatOptions) (*Store, error) {
	if len(opts.KEK) != KEKSize {
		return nil, fmt.Errorf("storage: KEK must be %d bytes, got %d", KEKSize, len(opts.KEK))
	}
	devSize, err := dev.Size()
	if err != nil {
		return nil, fmt.Errorf("storage: device size: %w", err)
	}
	devBlocks := uint64(devSize) / BlockSize
	var blocks uint64
	if opts.Size == 0 {
		blocks = blocksFitting(devBlocks)
		if blocks == 0 {
			return nil, fmt.Errorf("storage: device of %d bytes too small for a store", devSize)
		}
	} else {
		if opts.Size < 0 || opts.Size%BlockSize != 0 {
			return nil, fmt.Errorf("storage: size %d is not a positive multiple of %d", opts.Size, BlockSize)
		}
		blocks = uint64(opts.Size / BlockSize)
	}
	g, err := newGeometry(blocks)
	if err != nil {
		return nil, err
	}
	if g.total > devBlocks {
		return nil, fmt.Errorf("storage: %d-byte store needs a %d-byte device, have %d", blocks*BlockSize, g.total*BlockSize, devSize)
	}
	sb := superblock{version: FormatVersion, blocks: blocks, depth: uint32(g.depth()), nonceRes: nonceReserve}
	if _, err := rand.Read(sb.uuid[:]); err != nil {
		return nil, err
	}
	dek := make([]byte, dataKeyLen)
	if _, err := rand.Read(dek); err != nil {
		return nil, err
	}
	if sb.kekSlot, err = wrapKEK(opts.KEK, dek, sb.uuid); err != nil {
		return nil, err
	}
	if opts.Recovery != nil {
		if sb.recSlot, err = wrapRecovery(opts.Recovery, dek, sb.uuid); err != nil {
			return nil, fmt.Errorf("storage: wrap for recovery key: %w", err)
		}
	}
	if opts.Counter != nil {
		if sb.counter, err = opts.Counter.Read(); err != nil {
			return nil, fmt.Errorf("storage: read counter: %w", err)
		}
	}
	keys, err := deriveKeys(dek, sb.uuid)
	if err != nil {
		return nil, err
	}
	// Both copies are written so no superblock of an earlier store on the
	// device can win at Open.
	for epoch := uint64(0); epoch < sbCopies; epoch++ {
		sb.epoch = epoch
		if err := writeSuperblock(dev, keys, &sb); err != nil {
			return nil, err
		}
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("storage: sync: %w", err)
	}
	oo := opts.Open
	oo.KEK, oo.Recovery, oo.Counter = opts.KEK, nil, opts.Counter
	return Open(dev, oo)
}

// Open opens the store on dev with the KEK or the recovery private key.
// Unless ReadOnly it commits once (reserving nonces, recording the counter)
// and advances the counter.
func Open(dev Device, opts OpenOptions) (*Store, error) {
	if (opts.KEK == nil) == (opts.Recovery == nil) {
		return nil, errors.New("storage: Open needs exactly one of KEK and Recovery")
	}
	best, bestDEK, bestKeys, err := loadSuperblock(dev, opts)
	if err != nil {
		return nil, err
	}
	g, _ := newGeometry(best.blocks) // validated by decodeSuperblock
	devSize, err := dev.Size()
	if err != nil {
		return nil, fmt.Errorf("storage: device size: %w", err)
	}
	if uint64(devSize)/BlockSize < g.total {
		return nil, fmt.Errorf("storage: device of %d bytes is smaller than the store's layout (%d bytes)", devSize, g.total*BlockSize)
	}
	cacheBytes := opts.CacheBytes
	if cacheBytes == 0 {
		cacheBytes = DefaultCacheBytes
	}
	capNodes := int(cacheBytes / (BlockSize + 512))
	if min := g.depth() + 2; capNodes < min {
		capNodes = min
	}
	s := &Store{
		dev: dev, geom: g, keys: bestKeys, dek: bestDEK, sb: *best,
		readOnly: opts.ReadOnly, log: opts.Logger,
		cache: newNodeCache(capNodes), maxDirty: int64(capNodes / 2),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.uuid = best.uuid
	if _, err := rand.Read(s.nonceSalt[:]); err != nil {
		return nil, err
	}
	s.nextNonce.Store(best.nonceRes)
	s.nonceLimit.Store(best.nonceRes)

	var cval uint64
	if opts.Counter != nil {
		if cval, err = opts.Counter.Read(); err != nil {
			return nil, fmt.Errorf("storage: read counter: %w", err)
		}
		if best.counter != cval && best.counter != cval+1 {
			return nil, fmt.Errorf("%w: superblock records counter %d, counter is %d", ErrRollback, best.counter, cval)
		}
	}
	if !opts.NoMmap {
		// Mapped address space is bounded by 256x the cache, so page tables
		// (8 bytes per 4 KiB) stay within half the cache's size. Windows
		// are mapped on first use, so a failed Open leaves none behind.
		s.dmap = newDevMap(dev, int64(g.total)*BlockSize, cacheBytes*256)
	}
	if opts.ReadOnly {
		return s, nil
	}
	s.lockExclusive()
	if opts.Counter != nil {
		s.sb.counter = cval + 1
	}
	err = s.commitLocked(true, false)
	s.unlockExclusive()
	if err != nil {
		return nil, err
	}
	if opts.Counter != nil {
		// The superblock now says cval+1; a crash before this Increment is
		// the "one ahead" case Open accepts.
		if _, err := opts.Counter.Increment(); err != nil {
			return nil, fmt.Errorf("storage: advance counter: %w", err)
		}
	}
	return s, nil
}
