package machine

import (
	"context"
	"time"
)

// WaitFor polls cond every 20 ms until it returns true (true), or timeout
// passes or ctx ends (false): devices appear a moment after their drivers
// load, and the guest has no udev to say when.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}
