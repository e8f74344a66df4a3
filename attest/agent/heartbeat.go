package agent

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/protocol"
)

// Renewal is the result of a successful Heartbeat.
type Renewal struct {
	// Lease is how long the appliance may serve before fewer than k
	// verifiers' leases are valid.
	Lease time.Duration
	// Resealed holds the local share sealed for releases that at least k
	// verifiers published since the last Unlock or Heartbeat (release
	// label -> blob); add them to the disk header. Nil when none is new.
	Resealed map[string][]byte
	// Answers lists every verifier's answer, in configuration order.
	Answers []Answer
}

// Heartbeat re-attests a running appliance (purpose heartbeat, reporting
// the store's current epoch) to every verifier concurrently. serverCert,
// if not nil, is the DER certificate of the NBD server identity the
// appliance serves with: each quote covers it and each verifier records it
// for the home state's clients to pin.
//
// The agent keeps each verifier's lease: a renewal extends it, a refusal
// or revocation ends it at once, an unreachable verifier's lease runs on
// until it expires. Heartbeat succeeds while at least k leases are valid.
// Otherwise it returns a *QuorumError, wrapping ErrRevoked or ErrRefused
// when refusals took the count below k (zeroize now), else transient
// (retry until the last lease ends). The Renewal comes back with the
// error too, for its Answers.
func (a *Agent) Heartbeat(ctx context.Context, epoch uint64, serverCert []byte) (*Renewal, error) {
	start := time.Now()
	answers := map[string]Answer{}
	var resps []*protocol.AttestResponse
	round := a.newRound(false)
	replies := a.askAll(ctx, round, protocol.PurposeHeartbeat, epoch, serverCert)
	for r := range replies {
		name := r.v.name
		switch {
		case r.err != nil:
			answers[name] = failed(name, r.err)
		case r.resp.Decision != protocol.DecisionRenewed:
			answers[name] = failed(name, fmt.Errorf("agent: %s answered a heartbeat with %q", name, r.resp.Decision))
		default:
			answers[name] = Answer{Verifier: name, Outcome: OutcomeRenewed, Release: r.resp.Release, Lease: time.Duration(r.resp.LeaseSeconds) * time.Second}
			resps = append(resps, r.resp)
		}
	}
	round.close()
	list := a.inOrder(answers)
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	lease, valid := a.recordLeases(start, list)
	rn := &Renewal{Lease: lease, Answers: list}
	if lease <= 0 {
		return rn, newQuorumError("heartbeat", a.k, valid, len(a.verifiers), list)
	}
	if a.local != nil {
		sealed := map[string][]byte{}
		if err := a.sealToTargets(resps, "", sealed); err != nil {
			return rn, err
		}
		if len(sealed) > 0 {
			rn.Resealed = sealed
		}
	}
	return rn, nil
}

// sealToTargets seals the local share to each release that at least k of
// resps name as a seal target with the same PCR values, unless this boot
// already sealed to it (or it is current), adding the blobs to out. A
// single verifier cannot make the rack seal its share to an image the
// others never published. The caller holds tpmMu and mu.
func (a *Agent) sealToTargets(resps []*protocol.AttestResponse, current string, out map[string][]byte) error {
	for _, t := range agreedTargets(resps, a.k) {
		if t.label == current || a.sealedTo[t.label] == t.key {
			continue
		}
		pcrs, err := decodePCRs(t.pcrs)
		if err != nil {
			continue // no boot can have these values, so there is nothing to seal to
		}
		blob, err := keys.SealLocalTo(a.cfg.TPM, a.local, pcrs)
		if err != nil {
			return fmt.Errorf("agent: sealing the local share for %q: %w", t.label, err)
		}
		out[t.label] = blob
		a.sealedTo[t.label] = t.key
	}
	return nil
}

// target is one seal target as the verifiers named it.
type target struct {
	label, key string
	pcrs       map[string]string
}

// agreedTargets returns the seal targets at least k responses name with
// the same label and PCR values, sorted by label (for one label, the
// smallest key wins should two value sets both reach k).
func agreedTargets(resps []*protocol.AttestResponse, k int) []target {
	count := map[string]int{}
	byKey := map[string]target{}
	for _, r := range resps {
		seen := map[string]bool{}
		for _, st := range r.SealTargets {
			t := target{label: st.Release, key: targetKey(st), pcrs: st.PCRs}
			if seen[t.key] {
				continue // one verifier counts once
			}
			seen[t.key] = true
			count[t.key]++
			byKey[t.key] = t
		}
	}
	var out []target
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		t := byKey[key]
		if count[key] < k || slices.ContainsFunc(out, func(o target) bool { return o.label == t.label }) {
			continue
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(x, y target) int { return cmp.Compare(x.label, y.label) })
	return out
}

// targetKey is a seal target's label and PCR values in canonical form.
func targetKey(st protocol.SealTarget) string {
	var b strings.Builder
	b.WriteString(st.Release)
	for _, i := range slices.Sorted(maps.Keys(st.PCRs)) {
		b.WriteString("\x00" + i + "=" + strings.ToLower(st.PCRs[i]))
	}
	return b.String()
}

func decodePCRs(m map[string]string) (map[int][]byte, error) {
	out := make(map[int][]byte, len(m))
	for k, v := range m {
		i, err := strconv.Atoi(k)
		d, err2 := hex.DecodeString(v)
		if err != nil || err2 != nil || i < 0 || i > 23 || len(d) != 32 {
			return nil, fmt.Errorf("agent: seal target PCR %q=%q", k, v)
		}
		out[i] = d
	}
	return out, nil
}
