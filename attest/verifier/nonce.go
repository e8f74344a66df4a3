package verifier

import (
	"context"
	"crypto/rand"
	"errors"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
)

// nonce issues a fresh single-use nonce to an active appliance.
func (s *Server) nonce(ctx context.Context, req *protocol.NonceRequest) (*protocol.NonceResponse, error) {
	a, err := s.loadActive(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	n := make([]byte, protocol.NonceSize)
	rand.Read(n)
	now := s.db.now()
	exp := now.Add(s.opts.NonceTTL)
	if err := s.db.storeNonce(ctx, n, a.id, now, exp); err != nil {
		return nil, err
	}
	return &protocol.NonceResponse{Nonce: n, Expires: exp.UTC()}, nil
}

// checkNonce checks, without writing, that n was issued to id, is unused
// and unexpired. The nonce is marked used in the transaction that records
// the decision (DB.recordDecision or DB.recordRefusal), whatever the
// decision, so each attestation costs one write transaction.
func (s *Server) checkNonce(ctx context.Context, id string, n []byte) error {
	rec, err := s.db.nonceRecord(ctx, n)
	if errors.Is(err, ErrNotFound) {
		rec = nil
	} else if err != nil {
		return err
	}
	return checkNonceRecord(rec, id, s.db.now())
}

// checkNonceRecord is checkNonce's decision over the nonce's record (nil:
// none).
func checkNonceRecord(rec *nonceRecord, id string, now time.Time) error {
	switch {
	case rec == nil:
		return refuse("nonce", -1, "unknown nonce (never issued or long expired)")
	case rec.appliance != id:
		return refuse("nonce", -1, "nonce was issued to another appliance")
	case rec.used:
		return refuse("nonce", -1, "nonce already used (replay)")
	case now.After(rec.expires):
		return refuse("nonce", -1, "nonce expired %s ago", now.Sub(rec.expires).Round(time.Millisecond))
	}
	return nil
}
