package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
)

// Outcomes of one verifier's answer.
const (
	// OutcomeGranted: the verifier granted its key share (unlock).
	OutcomeGranted = protocol.DecisionGranted
	// OutcomeRenewed: the verifier renewed its lease (heartbeat).
	OutcomeRenewed = protocol.DecisionRenewed
	// OutcomeUnused: the verifier granted after k shares had already
	// combined; its share was not needed, its lease counts.
	OutcomeUnused = "unused"
	// OutcomeRefused: the verifier refused the evidence (Answer.Err is a
	// *RefusedError), or its share did not fit this store.
	OutcomeRefused = "refused"
	// OutcomeRevoked: an operator revoked the appliance at this verifier.
	OutcomeRevoked = "revoked"
	// OutcomeUnreachable: no answer (network, TLS, timeout, bad reply).
	OutcomeUnreachable = "unreachable"
	// OutcomeEnrolled: the verifier now trusts this TPM's AK (Enroll).
	OutcomeEnrolled = "enrolled"
	// OutcomeAlreadyEnrolled: the verifier already trusted an AK for this
	// appliance (Enroll); nothing was done there.
	OutcomeAlreadyEnrolled = "already enrolled"
)

// Answer is one verifier's answer to one attestation.
type Answer struct {
	// Verifier is the Endpoint's name.
	Verifier string
	// Outcome is one of the Outcome constants.
	Outcome string
	// Release is the release label the verifier matched, if it answered.
	Release string
	// Lease is the lease the verifier gave, if it granted or renewed.
	Lease time.Duration
	// Err says why, for refused, revoked and unreachable.
	Err error
}

// failed is the Answer for a verifier whose request failed with err.
func failed(name string, err error) Answer {
	ans := Answer{Verifier: name, Outcome: OutcomeUnreachable, Err: err}
	var re *RefusedError
	switch {
	case errors.Is(err, ErrRevoked):
		ans.Outcome = OutcomeRevoked
	case errors.As(err, &re):
		ans.Outcome = OutcomeRefused
	}
	return ans
}

// refusing reports whether the answer is a verifier's "no" rather than a
// transient failure.
func (ans Answer) refusing() bool {
	return ans.Outcome == OutcomeRefused || ans.Outcome == OutcomeRevoked
}

// QuorumError reports that fewer than k verifiers granted, renewed or
// enrolled. It wraps the refusals (so errors.Is finds ErrRefused or
// ErrRevoked) only when they alone make k impossible: when the other
// verifiers were merely unreachable, retrying may succeed.
type QuorumError struct {
	// Op is what was attempted ("unlock", "heartbeat", "enroll").
	Op string
	// Need is k; Got is how many verifiers agreed.
	Need, Got int
	// Answers lists every verifier's answer.
	Answers []Answer
	final   bool
}

// newQuorumError makes the error for op with got of n verifiers agreeing.
func newQuorumError(op string, need, got, n int, answers []Answer) *QuorumError {
	refused := 0
	for _, ans := range answers {
		if ans.refusing() {
			refused++
		}
	}
	return &QuorumError{Op: op, Need: need, Got: got, Answers: answers, final: n-refused < need}
}

func (e *QuorumError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "agent: %s: %d verifiers agreed, %d needed", e.Op, e.Got, e.Need)
	for _, ans := range e.Answers {
		if ans.Err == nil {
			fmt.Fprintf(&b, "; %s %s", ans.Verifier, ans.Outcome)
			continue
		}
		fmt.Fprintf(&b, "; %s %s: %v", ans.Verifier, ans.Outcome, ans.Err)
	}
	return b.String()
}

// Unwrap returns the refusals when they make the quorum impossible.
func (e *QuorumError) Unwrap() []error {
	if !e.final {
		return nil
	}
	var errs []error
	for _, ans := range e.Answers {
		if ans.refusing() {
			errs = append(errs, ans.Err)
		}
	}
	return errs
}

// Final reports whether refusals, not transient failures, left fewer than
// k verifiers: the appliance must zeroize rather than retry.
func (e *QuorumError) Final() bool { return e.final }

// recordLeases updates the per-verifier leases from one round's answers,
// started at start: a grant or renewal runs from start (the earliest the
// verifier can have counted from), a refusal or revocation ends that
// verifier's lease at once, and an unreachable verifier's lease runs on.
// It returns the time until fewer than k leases are valid (0 if already)
// and how many are valid now. The caller holds a.mu.
func (a *Agent) recordLeases(start time.Time, answers []Answer) (time.Duration, int) {
	for _, ans := range answers {
		switch {
		case ans.Lease > 0:
			a.leases[ans.Verifier] = start.Add(ans.Lease)
		case ans.refusing():
			delete(a.leases, ans.Verifier)
		}
	}
	now := time.Now()
	var ends []time.Time
	for _, end := range a.leases {
		if end.After(now) {
			ends = append(ends, end)
		}
	}
	if len(ends) < a.k {
		return 0, len(ends)
	}
	// The quorum holds until the k-th latest lease ends.
	slices.SortFunc(ends, func(x, y time.Time) int { return y.Compare(x) })
	return ends[a.k-1].Sub(now).Truncate(100 * time.Millisecond), len(ends) // rounded down: readable, never longer
}
