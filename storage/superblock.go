package storage

import (
	"crypto/hmac"
	"errors"
	"fmt"
)

func writeSuperblock(dev Device, keys *storeKeys, sb *superblock) error {
	b, err := sb.encode()
	if err != nil {
		return err
	}
	sb.mac = superblockMAC(keys.mac, b)
	copy(b[sbMACOffset:], sb.mac[:])
	if _, err := dev.WriteAt(b, int64(sb.epoch%sbCopies)*BlockSize); err != nil {
		return fmt.Errorf("storage: write superblock: %w", err)
	}
	return nil
}

// loadSuperblock reads both superblock copies of dev and returns the newest
// that opts unlocks, with its DEK and keys; if neither does, the error
// worseOpenError picks.
func loadSuperblock(dev Device, opts OpenOptions) (*superblock, []byte, *storeKeys, error) {
	var best *superblock
	var bestDEK []byte
	var bestKeys *storeKeys
	var firstErr error
	buf := make([]byte, BlockSize)
	for c := int64(0); c < sbCopies; c++ {
		if _, err := dev.ReadAt(buf, c*BlockSize); err != nil {
			return nil, nil, nil, fmt.Errorf("storage: read superblock: %w", err)
		}
		sb, dek, keys, err := unlockSuperblock(buf, opts)
		if err != nil {
			firstErr = worseOpenError(firstErr, err)
			continue
		}
		if sb.epoch%sbCopies != uint64(c) {
			firstErr = worseOpenError(firstErr, &IntegrityError{Block: -1, Level: -1, Reason: "superblock in the wrong copy"})
			continue
		}
		if best == nil || sb.epoch > best.epoch {
			best, bestDEK, bestKeys = sb, dek, keys
		}
	}
	if best == nil {
		return nil, nil, nil, firstErr
	}
	return best, bestDEK, bestKeys, nil
}

// worseOpenError picks the error Open reports when no superblock copy is
// usable: ErrKey first (one copy may be torn by a crash during Rewrap, the
// other wrapped for a different key: the caller should try its other
// key), then integrity failures, then malformed copies.
func worseOpenError(prev, err error) error {
	rank := func(e error) int {
		switch {
		case e == nil:
			return 0
		case errors.Is(e, ErrKey):
			return 3
		case errors.Is(e, ErrIntegrity):
			return 2
		default:
			return 1
		}
	}
	if rank(err) > rank(prev) {
		return err
	}
	return prev
}

func unlockSuperblock(b []byte, opts OpenOptions) (*superblock, []byte, *storeKeys, error) {
	sb, err := decodeSuperblock(b)
	if err != nil {
		return nil, nil, nil, err
	}
	var dek []byte
	if opts.KEK != nil {
		dek, err = unwrapKEK(opts.KEK, &sb.kekSlot, sb.uuid)
	} else {
		dek, err = unwrapRecovery(opts.Recovery, &sb.recSlot, sb.uuid)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	keys, err := deriveKeys(dek, sb.uuid)
	if err != nil {
		return nil, nil, nil, err
	}
	if mac := superblockMAC(keys.mac, b); !hmac.Equal(mac[:], sb.mac[:]) {
		return nil, nil, nil, &IntegrityError{Block: -1, Level: -1, Reason: "superblock MAC mismatch"}
	}
	return sb, dek, keys, nil
}
