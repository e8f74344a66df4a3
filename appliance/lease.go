package appliance

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// heartbeat re-attests, reporting the NBD server certificate serverCert
// (DER), retrying transient failures until the lease expires. The store's
// epoch is recorded in the disk header first, so the next boot reports an
// epoch the verifier has seen (or a newer one).
func (a *Appliance) heartbeat(ctx context.Context, store Store, expires time.Time, serverCert []byte) (time.Duration, error) {
	cfg := a.o.Config
	delay := 200 * time.Millisecond
	for {
		epoch := store.Epoch()
		if err := UpdateHeaderEpoch(a.disk, epoch, cfg.Disk.HeaderSize); err != nil {
			a.log.Error("recording the epoch in the disk header", "err", err)
		}
		l, err := a.o.Attester.Heartbeat(ctx, epoch, serverCert)
		if err == nil {
			return l, nil
		}
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrRevoked) {
			return 0, err
		}
		left := time.Until(expires)
		if left <= 0 {
			return 0, fmt.Errorf("%w (last error: %v)", ErrLeaseExpired, err)
		}
		a.log.Warn("heartbeat failed, retrying", "err", err, "lease_left", left.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
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
	if _, err := a.o.Attester.Heartbeat(ctx, hdr.Epoch, nil); err != nil {
		return err
	}
	return ErrLocked
}
