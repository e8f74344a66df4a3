package verifier_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
	"github.com/dataembassy/embassy/attest/verifier"
)

// cluster is n independent verifiers (own database, release key, TLS
// certificate) holding the shares of one k-of-n dealing per appliance.
type cluster struct {
	t  testing.TB
	k  int
	fs []*fixture
}

func newCluster(t testing.TB, k, n int) *cluster {
	t.Helper()
	c := &cluster{t: t, k: k}
	for range n {
		c.fs = append(c.fs, newFixture(t))
	}
	return c
}

// endpoints names the verifiers v0, v1, ...
func (c *cluster) endpoints() []agent.Endpoint {
	var eps []agent.Endpoint
	for i, f := range c.fs {
		eps = append(eps, agent.Endpoint{Name: fmt.Sprintf("v%d", i), URL: f.srv.URL, RootCAs: f.pool})
	}
	return eps
}

// boot measures the release-1 events into sw and returns an agent that
// asks every verifier of the cluster.
func (c *cluster) boot(id string, sw *swtpmtest.TPM) *agent.Agent {
	c.t.Helper()
	ap := &appliance{id: id, sw: sw, f: c.fs[0]}
	ap.boot(bootEvents)
	a, err := agent.New(agent.Config{Verifiers: c.endpoints(), Threshold: c.k, ApplianceID: id, TPM: sw.RW(), Log: ap.log,
		EventLog: func() ([]byte, error) { return []byte{}, nil }})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(a.Close)
	return a
}

// enroll deals id's remote secret k of n, enrolls sw's EK with its share
// at each verifier (shares[i] to verifier i, unless given) and binds the AK.
func (c *cluster) enroll(id string, sw *swtpmtest.TPM, shares []*keys.Share) *agent.Agent {
	t := c.t
	t.Helper()
	ctx := context.Background()
	if shares == nil {
		var err error
		if shares, err = keys.Deal(id, c.k, len(c.fs)); err != nil {
			t.Fatal(err)
		}
	}
	cert, err := agent.EKCertificate(sw.RW())
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range c.fs {
		if err := f.db.AddEKRoot(ctx, sw.CA, "test"); err != nil {
			t.Fatal(err)
		}
		if err := f.db.AddEKRoot(ctx, sw.Intermediate, "test"); err != nil {
			t.Fatal(err)
		}
		if err := f.db.Enroll(ctx, verifier.EnrollParams{ID: id, EKCert: cert, Share: shares[i], Actor: "test"}); err != nil {
			t.Fatalf("enroll at v%d: %v", i, err)
		}
	}
	a := c.boot(id, sw)
	ans, err := a.Enroll(ctx)
	if err != nil || len(ans) != len(c.fs) {
		t.Fatalf("Enroll: %+v %v", ans, err)
	}
	for _, x := range ans {
		if x.Outcome != agent.OutcomeEnrolled {
			t.Fatalf("Enroll at %s: %s %v", x.Verifier, x.Outcome, x.Err)
		}
	}
	return a
}

// provisioned enrolls id on a fresh swtpm with a fresh dealing and
// unlocks it once (a blank disk: provisioning).
func (c *cluster) provisioned(id string) (*swtpmtest.TPM, *agent.Agent, *agent.Unlocked) {
	c.t.Helper()
	sw := swtpmtest.Start(c.t)
	a := c.enroll(id, sw, nil)
	u, err := a.Unlock(context.Background(), 0, nil)
	if err != nil {
		c.t.Fatalf("first unlock of %s: %v", id, err)
	}
	return sw, a, u
}

// outcomes renders answers as "v0=granted v1=unreachable ...".
func outcomes(answers []agent.Answer) string {
	var parts []string
	for _, x := range answers {
		parts = append(parts, x.Verifier+"="+x.Outcome)
	}
	return strings.Join(parts, " ")
}

// countOutcome counts answers with outcome o.
func countOutcome(answers []agent.Answer, o ...string) int {
	n := 0
	for _, x := range answers {
		for _, want := range o {
			if x.Outcome == want {
				n++
			}
		}
	}
	return n
}

// TestThresholdTwoOfThree: all up unlocks; with one verifier down the
// reboot unlocks the same store; with two down there is no key, the error
// names both, the phase PCR is untouched and the same boot unlocks once
// they are back.
func TestThresholdTwoOfThree(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 2, 3)
	sw := swtpmtest.Start(t)
	a := c.enroll("rack1", sw, nil)
	u, err := a.Unlock(ctx, 0, nil)
	if err != nil {
		t.Fatalf("all up: %v", err)
	}
	if !u.Provision || len(u.KEK) != keys.ShareSize || countOutcome(u.Answers, agent.OutcomeGranted) < 2 ||
		countOutcome(u.Answers, agent.OutcomeGranted, agent.OutcomeUnused) != 3 || u.Lease <= 0 {
		t.Fatalf("all up: provision %v, answers %s, lease %v", u.Provision, outcomes(u.Answers), u.Lease)
	}
	if _, err := a.Heartbeat(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}

	c.fs[1].down.Store(true)
	sw.Reboot()
	a = c.boot("rack1", sw)
	u2, err := a.Unlock(ctx, 1, u.Sealed)
	if err != nil {
		t.Fatalf("one down: %v", err)
	}
	if u2.Provision || !sameKEK(u.KEK, u2.KEK) || u2.Answers[1].Outcome != agent.OutcomeUnreachable {
		t.Fatalf("one down: provision %v, same KEK %v, answers %s", u2.Provision, sameKEK(u.KEK, u2.KEK), outcomes(u2.Answers))
	}

	c.fs[2].down.Store(true)
	sw.Reboot()
	a = c.boot("rack1", sw)
	_, err = a.Unlock(ctx, 1, u.Sealed)
	var qe *agent.QuorumError
	if !errors.As(err, &qe) || qe.Final() || errors.Is(err, agent.ErrRefused) || qe.Got != 1 ||
		!strings.Contains(err.Error(), "v1 unreachable") || !strings.Contains(err.Error(), "v2 unreachable") {
		t.Fatalf("two down: %v, want a transient quorum error naming v1 and v2", err)
	}
	c.fs[1].down.Store(false)
	u3, err := a.Unlock(ctx, 1, u.Sealed)
	if err != nil || !sameKEK(u.KEK, u3.KEK) {
		t.Fatalf("same boot after v1 is back: %v (phase PCR must be untouched by a failed quorum)", err)
	}
}

// TestThresholdDatabasesBelowK: the rows of any k-1 verifiers do not give
// the remote secret, not even with a forged share for the missing index:
// the KEK needs k verifiers' grants (and the TPM's local share).
func TestThresholdDatabasesBelowK(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 2, 3)
	c.provisioned("rack1")
	var stolen []*keys.Share
	for _, f := range c.fs {
		sh, err := f.db.StoredShare(ctx, "rack1")
		if err != nil {
			t.Fatal(err)
		}
		stolen = append(stolen, sh)
	}
	for i, sh := range stolen {
		if _, err := keys.Combine("rack1", []*keys.Share{sh}); !errors.Is(err, keys.ErrTooFewShares) {
			t.Fatalf("v%d's database alone: %v, want ErrTooFewShares", i, err)
		}
		forged := *sh
		forged.Index = sh.Index%3 + 1
		forged.Value = make([]byte, len(sh.Value))
		for guess := range 256 {
			forged.Value[0] = byte(guess)
			if _, err := keys.Combine("rack1", []*keys.Share{sh, &forged}); !errors.Is(err, keys.ErrShareCommit) {
				t.Fatalf("v%d's share with a forged one: %v, want ErrShareCommit", i, err)
			}
		}
	}
	if r, err := keys.Combine("rack1", stolen[:2]); err != nil || len(r.Secret) != keys.ShareSize {
		t.Fatalf("k real shares: %v", err)
	}
}

// TestThresholdRevocation: one verifier's revocation ends its lease at once
// but two leases keep the rack serving; the second revocation leaves fewer
// than k and the heartbeat fails with ErrRevoked.
func TestThresholdRevocation(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 2, 3)
	_, a, _ := c.provisioned("rack1")
	if err := c.fs[0].db.Revoke(ctx, "rack1", "stolen", "op"); err != nil {
		t.Fatal(err)
	}
	r, err := a.Heartbeat(ctx, 1, nil)
	if err != nil || r.Answers[0].Outcome != agent.OutcomeRevoked || countOutcome(r.Answers, agent.OutcomeRenewed) != 2 || r.Lease <= 0 {
		t.Fatalf("one revoked: %v %s", err, outcomes(r.Answers))
	}
	if err := c.fs[2].db.Revoke(ctx, "rack1", "stolen", "op"); err != nil {
		t.Fatal(err)
	}
	r, err = a.Heartbeat(ctx, 1, nil)
	if !errors.Is(err, agent.ErrRevoked) || r.Lease != 0 {
		t.Fatalf("two revoked: %v, want ErrRevoked and no lease", err)
	}
}

// TestThresholdPolicyLacksRelease: a verifier whose policy lacks the
// release refuses (check release) and the other two unlock; when two lack
// it the unlock is refused.
func TestThresholdPolicyLacksRelease(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 2, 3)
	sw := swtpmtest.Start(t)
	a := c.enroll("rack1", sw, nil)
	withdraw := func(f *fixture) {
		t.Helper()
		rels, err := f.db.Releases(ctx)
		if err != nil || len(rels) != 1 {
			t.Fatalf("releases: %v", err)
		}
		if err := f.db.WithdrawRelease(ctx, rels[0].Digest, "op"); err != nil {
			t.Fatal(err)
		}
		f.now = f.now.Add(3 * time.Second) // past the policy cache
	}
	withdraw(c.fs[2])
	u, err := a.Unlock(ctx, 0, nil)
	var re *agent.RefusedError
	if err != nil || u.Answers[2].Outcome != agent.OutcomeRefused || !errors.As(u.Answers[2].Err, &re) || re.Check != "release" {
		t.Fatalf("one lacks the release: %v %s", err, outcomes(u.Answers))
	}
	withdraw(c.fs[1])
	sw.Reboot()
	a = c.boot("rack1", sw)
	if _, err := a.Unlock(ctx, 1, u.Sealed); !errors.Is(err, agent.ErrRefused) {
		t.Fatalf("two lack the release: %v, want ErrRefused", err)
	}
}

// TestThresholdForeignShares: a verifier handing out a wrong share (a
// damaged or tampered row) cannot stop the two honest ones, whose shares
// match the commitment, and cannot open the store with one of them; a
// share dealt for another appliance, or from another provisioning of this
// one, is refused by its set.
func TestThresholdForeignShares(t *testing.T) {
	ctx := context.Background()
	deal := func(id string) []*keys.Share {
		t.Helper()
		s, err := keys.Deal(id, 2, 3)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	c := newCluster(t, 2, 3)
	sw := swtpmtest.Start(t)
	mine := deal("rack1")
	tampered := *mine[2]
	tampered.Value = bytes.Clone(mine[2].Value)
	tampered.Value[0] ^= 1
	a := c.enroll("rack1", sw, []*keys.Share{mine[0], mine[1], &tampered})
	u, err := a.Unlock(ctx, 0, nil)
	if err != nil {
		t.Fatalf("one verifier with a tampered share: %v", err)
	}
	c.fs[1].down.Store(true)
	sw.Reboot()
	a = c.boot("rack1", sw)
	if _, err := a.Unlock(ctx, 1, u.Sealed); !errors.Is(err, keys.ErrShareCommit) {
		t.Fatalf("an honest verifier and the tampered share: %v, want ErrShareCommit", err)
	}

	other := newCluster(t, 2, 3)
	sw2 := swtpmtest.Start(t)
	b := other.enroll("rack3", sw2, append(deal("rack3")[:2], deal("rack2")[2]))
	u3, err := b.Unlock(ctx, 0, nil)
	// v2's answer may come after v0's and v1's shares combined (unused);
	// if it came before, its share was of another set (refused).
	if v2 := u3.Answers[2]; err != nil || !(v2.Outcome == agent.OutcomeUnused || v2.Outcome == agent.OutcomeRefused && errors.Is(v2.Err, agent.ErrForeignShare)) {
		t.Fatalf("another appliance's share at v2: %v %s", err, outcomes(u3.Answers))
	}
	other.fs[0].down.Store(true)
	sw2.Reboot()
	b = other.boot("rack3", sw2)
	_, err = b.Unlock(ctx, 1, u3.Sealed)
	var qe *agent.QuorumError
	if !errors.As(err, &qe) || len(qe.Answers) != 3 || !errors.Is(qe.Answers[2].Err, agent.ErrForeignShare) {
		t.Fatalf("v1 and another appliance's share at v2: %v, want v2's share refused as foreign", err)
	}

	// The same appliance provisioned again elsewhere (a new dealing): its
	// shares do not open the store of the first provisioning.
	again := newCluster(t, 2, 3)
	sw.Reboot()
	a = again.enroll("rack1", sw, nil)
	_, err = a.Unlock(ctx, 1, u.Sealed)
	if !errors.Is(err, agent.ErrForeignShare) || !errors.Is(err, agent.ErrRefused) {
		t.Fatalf("shares of another provisioning: %v, want ErrForeignShare and ErrRefused", err)
	}
}

// TestThresholdSealTargetsNeedK: a release published at one verifier only
// is not sealed to (one authority cannot make the rack ready to boot an
// image the others never published); once k publish it, the next
// heartbeat seals to it and the reboot into it opens the same store.
func TestThresholdSealTargetsNeedK(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 2, 3)
	sw, a, u := c.provisioned("rack1")
	publish := func(f *fixture) {
		f.publish(v2Events, "2")
		f.now = f.now.Add(3 * time.Second) // past the policy cache
	}
	publish(c.fs[0])
	if r, err := a.Heartbeat(ctx, 1, nil); err != nil || r.Resealed != nil {
		t.Fatalf("release 2 at one verifier: resealed %v (%v)", r.Resealed, err)
	}
	publish(c.fs[2])
	r, err := a.Heartbeat(ctx, 1, nil)
	if err != nil || len(r.Resealed) != 1 || r.Resealed["embassy-appliance 2"] == nil {
		t.Fatalf("release 2 at two verifiers: resealed %v (%v)", r.Resealed, err)
	}
	u.Sealed.ByRelease["embassy-appliance 2"] = r.Resealed["embassy-appliance 2"]
	sw.Reboot()
	ap := &appliance{id: "rack1", sw: sw, f: c.fs[0]}
	ap.boot(v2Events)
	b, err := agent.New(agent.Config{Verifiers: c.endpoints(), Threshold: 2, ApplianceID: "rack1", TPM: sw.RW(), Log: ap.log,
		EventLog: func() ([]byte, error) { return []byte{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	u2, err := b.Unlock(ctx, 1, u.Sealed)
	if err != nil || u2.Release != "embassy-appliance 2" || !sameKEK(u.KEK, u2.KEK) {
		t.Fatalf("reboot into release 2: %v", err)
	}
	// v1 never published release 2: it refuses, the other two grant.
	if u2.Answers[1].Outcome != agent.OutcomeRefused {
		t.Fatalf("v1 without release 2: %s", outcomes(u2.Answers))
	}
}
