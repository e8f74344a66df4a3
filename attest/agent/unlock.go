package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/protocol"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"google.golang.org/protobuf/proto"
)

// QuorumGrace is how long Unlock still waits for the other verifiers once
// k shares have combined: their answers count for the lease, but a slow or
// unreachable verifier does not hold the boot up.
const QuorumGrace = 2 * time.Second

// Sealed is what the data disk header keeps of the key: the provisioning
// (split of the remote secret) the store belongs to, and the local share
// sealed by the TPM for each release the appliance may boot.
type Sealed struct {
	// Set is the provisioning's share set id; shares of any other set are
	// refused.
	Set keys.SetID
	// ByRelease maps a release label ("embassy-appliance 7") to the local
	// share sealed to the PCRs a boot of that release has.
	ByRelease map[string][]byte
}

// Unlocked is the result of a successful Unlock.
type Unlocked struct {
	// KEK is the key-encryption key (keys.ShareSize bytes). Zeroize it
	// when done.
	KEK []byte
	// Provision is true when every verifier that granted has never seen a
	// store from this appliance: create (format) the store with KEK.
	Provision bool
	// Sealed is the complete header content to write now: the set id, the
	// local share sealed for this release, and sealed for every other
	// release at least k verifiers publish (so an upgrade still unlocks;
	// releases no longer published drop out).
	Sealed *Sealed
	// Lease is how long the appliance may serve before fewer than k
	// verifiers' leases are valid.
	Lease time.Duration
	// Release names the release the verifiers matched.
	Release string
	// Answers lists every verifier's answer, in configuration order.
	Answers []Answer
}

// grant is one imported share with the answer that brought it.
type grant struct {
	verifier string
	share    *keys.Share
	resp     *protocol.AttestResponse
}

// Unlock attests the boot (purpose unlock, reporting the store's epoch) to
// every verifier concurrently, each with its own nonce (one quote covers
// them all: protocol.QuoteSetData), imports each granted share with the EK
// and, as soon as k shares of one set combine, unseals the local share from sealed (or, when the verifiers say
// to provision, makes and seals a new one), derives the KEK and extends
// the phase PCR: after that, in this boot, the TPM gives up no share again.
// sealed is nil on a blank disk; otherwise shares of a set other than
// sealed.Set are refused as another provisioning's.
//
// With fewer than k grants the error is a *QuorumError listing every
// answer, wrapping ErrRevoked or ErrRefused when refusals made k
// impossible, and the phase PCR is untouched.
func (a *Agent) Unlock(ctx context.Context, epoch uint64, sealed *Sealed) (*Unlocked, error) {
	start := time.Now()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answers := map[string]Answer{}
	bySet := map[keys.SetID][]grant{}
	defer func() {
		for _, gs := range bySet {
			for _, g := range gs {
				clear(g.share.Value)
			}
		}
	}()
	var (
		remote     *keys.Remote
		winners    []grant
		combineErr error
		grace      <-chan time.Time
	)
	round := a.newRound(true)
	defer round.close()
	replies := a.askAll(rctx, round, protocol.PurposeUnlock, epoch, nil)
	for replies != nil {
		var r reply
		var ok bool
		select {
		case r, ok = <-replies:
			if !ok {
				replies = nil
				continue
			}
		case <-grace:
			cancel() // the rest answer with a context error
			grace = nil
			continue
		}
		name := r.v.name
		if r.err != nil {
			if remote != nil && rctx.Err() != nil {
				r.err = fmt.Errorf("no answer within %v of the quorum: %w", QuorumGrace, r.err)
			}
			answers[name] = failed(name, r.err)
			continue
		}
		ans := Answer{Verifier: name, Outcome: OutcomeGranted, Release: r.resp.Release, Lease: time.Duration(r.resp.LeaseSeconds) * time.Second}
		if remote != nil {
			ans.Outcome = OutcomeUnused
			answers[name] = ans
			winners = append(winners, grant{resp: r.resp})
			continue
		}
		sh, err := a.grantedShare(round, r.resp, sealed)
		if err != nil {
			// A share that cannot be used counts as this verifier's refusal.
			answers[name] = Answer{Verifier: name, Outcome: OutcomeRefused, Release: r.resp.Release, Err: fmt.Errorf("%w: %w", ErrRefused, err)}
			continue
		}
		answers[name] = ans
		bySet[sh.Set] = append(bySet[sh.Set], grant{verifier: name, share: sh, resp: r.resp})
		gs := bySet[sh.Set]
		if len(gs) < a.k {
			continue
		}
		shares := make([]*keys.Share, len(gs))
		for i, g := range gs {
			shares[i] = g.share
		}
		if remote, err = keys.Combine(a.cfg.ApplianceID, shares); err != nil {
			combineErr = err // a wrong share: more grants may still combine
			continue
		}
		winners = append(winners, gs...)
		grace = time.After(QuorumGrace)
	}
	if remote != nil {
		// Shares of another set than the one that combined (a blank disk
		// takes any set that reaches k) are another provisioning's.
		for set, gs := range bySet {
			for _, g := range gs {
				if set != remote.Set {
					answers[g.verifier] = Answer{Verifier: g.verifier, Outcome: OutcomeRefused, Release: g.resp.Release,
						Err: fmt.Errorf("%w: %w: share of provisioning %s, the others' is %s", ErrRefused, ErrForeignShare, set, remote.Set)}
				}
			}
		}
	}
	list := a.inOrder(answers)
	if remote == nil {
		got := 0
		for _, ans := range list {
			if ans.Outcome == OutcomeGranted {
				got++
			}
		}
		qe := newQuorumError("unlock", a.k, got, len(a.verifiers), list)
		if combineErr != nil {
			return nil, fmt.Errorf("%w (the granted shares do not combine: %w)", qe, combineErr)
		}
		return nil, qe
	}
	defer remote.Zeroize()
	defer a.extendPhase()
	return a.finishUnlock(start, remote, winners, sealed, list)
}

// grantedShare decodes and imports the share in resp, refusing one of a
// provisioning other than sealed's.
func (a *Agent) grantedShare(round *tpmRound, resp *protocol.AttestResponse, sealed *Sealed) (*keys.Share, error) {
	if resp.Decision != protocol.DecisionGranted || len(resp.ImportBlob) == 0 {
		return nil, fmt.Errorf("agent: verifier answered %q without a share", resp.Decision)
	}
	var blob tpmpb.ImportBlob
	if err := proto.Unmarshal(resp.ImportBlob, &blob); err != nil {
		return nil, fmt.Errorf("agent: import blob: %w", err)
	}
	sh, err := round.importShare(&blob)
	if err != nil {
		return nil, err
	}
	if sh.Threshold != a.k || sh.Total != len(a.verifiers) {
		clear(sh.Value)
		return nil, fmt.Errorf("%w: share of a %d-of-%d split, the appliance is configured for %d of %d", ErrShareSplit, sh.Threshold, sh.Total, a.k, len(a.verifiers))
	}
	if sealed != nil && sh.Set != sealed.Set {
		clear(sh.Value)
		return nil, fmt.Errorf("%w: share of provisioning %s, the store belongs to %s (an earlier or another provisioning)", ErrForeignShare, sh.Set, sealed.Set)
	}
	return sh, nil
}

// ErrForeignShare reports a verifier's share from a provisioning other than
// the store's: the verifier re-enrolled the appliance, or hands out another
// store's share.
var ErrForeignShare = errors.New("agent: share of another provisioning")

// ErrShareSplit reports a share dealt k of n for other k or n than the
// appliance's configuration. It is refused: otherwise one verifier could
// provision a blank rack alone with a 1-of-1 share.
var ErrShareSplit = errors.New("agent: share of another split")

// finishUnlock unseals or makes the local share, seals it to the agreed
// seal targets, derives the KEK and records the leases.
func (a *Agent) finishUnlock(start time.Time, remote *keys.Remote, winners []grant, sealed *Sealed, answers []Answer) (*Unlocked, error) {
	first := winners[0].resp
	u := &Unlocked{Provision: true, Release: first.Release, Answers: answers,
		Sealed: &Sealed{Set: remote.Set, ByRelease: map[string][]byte{}}}
	resps := make([]*protocol.AttestResponse, len(winners))
	for i, g := range winners {
		resps[i] = g.resp
		u.Provision = u.Provision && g.resp.Provision
	}
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	local, blob, err := a.localShare(u, sealed, resps)
	if err != nil {
		return nil, err
	}
	u.Sealed.ByRelease[u.Release] = blob
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.local)
	a.local = local
	a.sealedTo = map[string]string{u.Release: ""}
	if err := a.sealToTargets(resps, u.Release, u.Sealed.ByRelease); err != nil {
		return nil, err
	}
	if u.KEK, err = keys.DeriveKEK(local, remote, a.cfg.ApplianceID); err != nil {
		return nil, err
	}
	u.Lease, _ = a.recordLeases(start, answers)
	return u, nil
}

// localShare returns the local share and its blob for this release: a new
// one when provisioning, else unsealed from the blob sealed for the
// release one of the granting verifiers matched. The caller holds tpmMu.
func (a *Agent) localShare(u *Unlocked, sealed *Sealed, resps []*protocol.AttestResponse) ([]byte, []byte, error) {
	if u.Provision {
		local, err := keys.NewShare()
		if err != nil {
			return nil, nil, err
		}
		blob, err := keys.SealLocal(a.cfg.TPM, local, resps[0].PCRs)
		if err != nil {
			return nil, nil, err
		}
		return local, blob, nil
	}
	if sealed == nil {
		return nil, nil, errors.New("agent: the verifiers know a store from this appliance but no sealed local share was given (blank disk?)")
	}
	for _, r := range resps {
		blob := sealed.ByRelease[r.Release]
		if blob == nil {
			continue
		}
		local, err := keys.UnsealLocal(a.cfg.TPM, blob)
		if err != nil {
			return nil, nil, err
		}
		u.Release = r.Release
		return local, blob, nil
	}
	return nil, nil, fmt.Errorf("agent: no local share is sealed for release %q (sealed for %v)", resps[0].Release, slices.Sorted(maps.Keys(sealed.ByRelease)))
}

// extendPhase ends this boot's unsealing, holding the TPM.
func (a *Agent) extendPhase() {
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	// A failed extension shows in the PCR, which the appliance reads.
	_ = ExtendPhase(a.cfg.TPM)
}

// inOrder lists answers in configuration order.
func (a *Agent) inOrder(m map[string]Answer) []Answer {
	out := make([]Answer, 0, len(m))
	for _, v := range a.verifiers {
		if ans, ok := m[v.name]; ok {
			out = append(out, ans)
		}
	}
	return out
}
