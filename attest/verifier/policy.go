package verifier

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"slices"

	"github.com/dataembassy/embassy/attest/release"
)

// policyRelease is a published, verified, not withdrawn release.
type policyRelease struct {
	digest string
	label  string
	pcrs   map[int][]byte
}

// policy returns the accepted releases, reloading them from the DB (and
// re-verifying their signatures) at most every PolicyRefresh.
func (s *Server) policy(ctx context.Context) ([]policyRelease, error) {
	s.polMu.Lock()
	defer s.polMu.Unlock()
	if s.pol != nil && s.db.now().Sub(s.polLoaded) < s.opts.PolicyRefresh {
		return s.pol, nil
	}
	trusted, k, err := s.db.ReleaseKeys(ctx)
	if err != nil {
		return nil, err
	}
	stored, err := s.db.publishedReleases(ctx)
	if err != nil {
		return nil, err
	}
	pol := []policyRelease{}
	for _, st := range stored {
		p, err := verifyRelease(st, trusted, k)
		if err != nil {
			s.log.Warn("verifier: published release no longer verifies; ignored", "digest", st.digest, "err", err)
			continue
		}
		pol = append(pol, p)
	}
	s.pol, s.polLoaded = pol, s.db.now()
	return pol, nil
}

// verifyRelease checks a published release's signatures against the
// trusted keys and threshold k and returns the PCRs it accepts.
func verifyRelease(st storedRelease, trusted []ed25519.PublicKey, k int) (policyRelease, error) {
	env, err := release.ParseEnvelope(st.envelope)
	if err != nil {
		return policyRelease{}, err
	}
	v, err := env.Verify(trusted, k)
	if err != nil {
		return policyRelease{}, err
	}
	pv, err := v.Manifest.PCRValues()
	if err != nil {
		return policyRelease{}, err
	}
	p := policyRelease{digest: st.digest, label: v.Manifest.Name + " " + v.Manifest.Release, pcrs: map[int][]byte{}}
	for i, val := range pv {
		p.pcrs[int(i)] = val
	}
	return p, nil
}

// checkPolicy compares every policy PCR with the quote: the appliance's
// firmware baseline, then the PCRs of one published release.
func (s *Server) checkPolicy(ctx context.Context, a *appliance, pcrs map[int][]byte) (*policyRelease, error) {
	base, err := s.db.firmwareBaseline(ctx, a.id)
	if err != nil {
		return nil, err
	}
	if err := checkBaseline(base, pcrs); err != nil {
		return nil, err
	}
	pol, err := s.policy(ctx)
	if err != nil {
		return nil, err
	}
	return matchRelease(pol, pcrs)
}

// checkBaseline refuses quoted PCRs that differ from the firmware
// baseline, naming the lowest PCR that does.
func checkBaseline(base, pcrs map[int][]byte) error {
	if len(base) == 0 {
		return refuse("baseline", -1, "no firmware baseline recorded")
	}
	for _, i := range slices.Sorted(mapKeys(base)) {
		if !bytes.Equal(base[i], pcrs[i]) {
			return refuse("baseline", i, "PCR %d is %x, baseline %x", i, pcrs[i], base[i])
		}
	}
	return nil
}

// matchRelease returns the release of pol whose every PCR the quote has.
// When none matches, the refusal names the closest release (fewest PCRs
// differing) and its lowest differing PCR.
func matchRelease(pol []policyRelease, pcrs map[int][]byte) (*policyRelease, error) {
	if len(pol) == 0 {
		return nil, refuse("release", -1, "no release is published")
	}
	var best *Refusal
	bestBad := -1
	for i := range pol {
		bad, first := 0, -1
		for _, idx := range slices.Sorted(mapKeys(pol[i].pcrs)) {
			if !bytes.Equal(pol[i].pcrs[idx], pcrs[idx]) {
				bad++
				if first < 0 {
					first = idx
				}
			}
		}
		if bad == 0 {
			return &pol[i], nil
		}
		if best == nil || bad < bestBad {
			best = refuse("release", first, "PCR %d is %x; closest release %q expects %x (%d PCR(s) differ)",
				first, pcrs[first], pol[i].label, pol[i].pcrs[first], bad)
			bestBad = bad
		}
	}
	return nil, best
}

func mapKeys[V any](m map[int]V) func(func(int) bool) {
	return func(yield func(int) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
