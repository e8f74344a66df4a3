package storage

import (
	"encoding/binary"
	"errors"
)

// nonceReserve is how many nonces a commit reserves ahead in the
// superblock. After a crash the store skips the whole reserved range.
// A variable only so tests can shrink it (it must stay above maxChunk).
var nonceReserve uint64 = 1 << 24

// maxNonceCounter bounds the write counter: nonces carry its low 48 bits.
// 2^48 block writes is 1 EiB written over the store's life.
const maxNonceCounter = 1 << 48

// ErrNoncesExhausted is returned by writes once the store has used every
// nonce of its write counter (after 1 EiB of writes); copy the data to a
// newly formatted store.
var ErrNoncesExhausted = errors.New("storage: write counter exhausted")

// nonceBytes builds a data nonce: the session's random 48-bit salt, then
// the low 48 bits of the write counter.
func (s *Store) nonceBytes(dst *[12]byte, n uint64) {
	copy(dst[:6], s.nonceSalt[:])
	var c [8]byte
	binary.BigEndian.PutUint64(c[:], n)
	copy(dst[6:], c[2:])
}

// noncesLow reports whether n more nonces would pass the reservation.
// Called with commitMu held (either way) or as a hint.
func (s *Store) noncesLow(n uint64) bool {
	return s.nextNonce.Load()+n+maxChunk >= s.nonceLimit.Load()
}

// blockAAD is the associated data of block i: store identity and index.
func (s *Store) blockAAD(dst *[24]byte, i uint64) []byte {
	copy(dst[:16], s.uuid[:])
	binary.BigEndian.PutUint64(dst[16:], i)
	return dst[:]
}
