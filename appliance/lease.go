package appliance

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// heartbeat re-attests, reporting the NBD server certificate serverCert
// (DER), retrying transient failures until the lease expires. The store's
// epoch is recorded in the disk header first, so the next boot reports an
// epoch the verifier has seen (or a newer one).
func (a *Appliance) heartbeat(ctx context.Context, store Store, expires time.Time, serverCert []byte) (*Renewal, error) {
	cfg := a.o.Config
	delay := 200 * time.Millisecond
	for {
		epoch := store.Epoch()
		if err := UpdateHeaderEpoch(a.disk, epoch, cfg.Disk.HeaderSize); err != nil {
			a.log.Error("recording the epoch in the disk header", "err", err)
		}
		r, err := a.o.Attester.Heartbeat(ctx, epoch, serverCert)
		if err == nil && r == nil {
			err = errors.New("appliance: the attester returned no renewal")
		}
		if err == nil {
			a.logAnswers(r.Answers, true)
			a.o.Monitor.Leases(r.Answers, r.Lease)
			a.addResealed(r.Resealed)
			return r, nil
		}
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrRevoked) {
			return nil, err
		}
		left := time.Until(expires)
		if left <= 0 {
			return nil, fmt.Errorf("%w (last error: %v)", ErrLeaseExpired, err)
		}
		a.log.Warn("heartbeat failed, retrying", "err", err, "lease_left", left.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(delay, left)):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// waitForReadmission runs when this boot's unseal window is closed (after a
// revocation, refusal or lost lease): it asks the verifier, by heartbeat,
// whether the appliance is admitted again, and returns ErrLocked (reboot)
// when it is.
func (a *Appliance) waitForReadmission(ctx context.Context) error {
	hdr, err := ReadHeader(a.disk, a.o.Config.Disk.HeaderSize)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHalted, err)
	}
	r, err := a.o.Attester.Heartbeat(ctx, hdr.Epoch, nil)
	if err != nil {
		return err
	}
	if r != nil {
		a.logAnswers(r.Answers, true)
	}
	return ErrLocked
}

// logAnswers puts every verifier's answer on the console. On a heartbeat
// the routine answers (renewed, unused) go at Debug, so a running rack's
// console shows only the verifiers that failed; anything else, and every
// answer at unlock, is worth an operator's eye.
func (a *Appliance) logAnswers(answers []Answer, heartbeat bool) {
	for _, an := range answers {
		args := []any{"verifier", an.Verifier, "outcome", an.Outcome, "release", an.Release, "lease", an.Lease}
		if an.Err != nil {
			args = append(args, "err", an.Err)
		}
		switch {
		case an.Outcome == OutcomeRefused || an.Outcome == OutcomeRevoked || an.Outcome == OutcomeUnreachable:
			a.log.Warn("verifier answered", args...)
		case heartbeat && an.Outcome != OutcomeRenewed && an.Outcome != OutcomeUnused:
			a.log.Warn("verifier answered", args...)
		case heartbeat:
			a.log.Debug("verifier answered", args...)
		default:
			a.log.Info("verifier answered", args...)
		}
	}
}

// renewedBy names the verifiers that renewed, comma-separated, for the
// console's "lease renewed" line: which authorities still vouch.
func renewedBy(answers []Answer) string {
	var names []string
	for _, an := range answers {
		if an.Outcome == OutcomeRenewed {
			names = append(names, an.Verifier)
		}
	}
	return strings.Join(names, ",")
}

// addResealed keeps the local share sealed to newly published releases in
// the disk header, so a reboot into one of them keeps the store. Failing to
// write is logged, not fatal: serving goes on, and the next unlock rewrites
// the header's shares anyway.
func (a *Appliance) addResealed(blobs map[string][]byte) {
	if len(blobs) == 0 {
		return
	}
	if err := AddSealed(a.disk, blobs, a.o.Config.Disk.HeaderSize); err != nil {
		a.log.Error("recording sealed local shares in the disk header", "err", err)
		return
	}
	for _, l := range slices.Sorted(maps.Keys(blobs)) {
		a.log.Info("sealed local share for release", "release", l)
	}
}
