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
