package qemu_test

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/dataembassy/embassy/qemu"
)

// verifierNames name a cluster's verifier processes.
var verifierNames = []string{"tallinn", "tartu", "narva"}

// newClusterChain is a chain whose appliance gets its key k of n from
// real verifier processes (one per name), each with its own database and
// share, granting leases of lease.
func newClusterChain(t testing.TB, names []string, k int, lease time.Duration) *chain {
	t.Helper()
	c := newChainTPM(t)
	ctx := context.Background()
	var err error
	if c.cluster, err = qemu.StartCluster(ctx, qemu.ClusterOptions{
		Binary: verifierBinary(t), Dir: t.TempDir(), Names: names, Threshold: k, Lease: lease,
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.cluster.Close)
	c.v = c.cluster.Verifiers[0].Verifier
	if err := c.cluster.Enroll(ctx, applianceID, c.tpm); err != nil {
		t.Fatal(err)
	}
	c.build(t, qemu.ConfigOptions{Verifiers: c.cluster.Endpoints(), Threshold: k})
	t.Logf("verifiers %s", c.cluster)
	return c
}

// answerRE matches the appliance's console line for one verifier's
// answer (agent.Answer: verifier name and outcome).
func answerRE(name, outcome string) *regexp.Regexp {
	return regexp.MustCompile(`verifier="?` + regexp.QuoteMeta(name) + `"?\b.*\boutcome="?` + outcome + `(\s|"|$)`)
}

// waitAnswer waits for the console to show verifier name answering with
// outcome (from line index from on).
func waitAnswer(t testing.TB, m *qemu.Machine, from int, name, outcome string, within time.Duration) qemu.Line {
	t.Helper()
	l, err := m.WaitForLineFrom(from, answerRE(name, outcome), within)
	if err != nil {
		t.Fatalf("no %q answer from verifier %s on the console: %v", outcome, name, err)
	}
	return l
}

// audited counts the successful attest records of action (attest-unlock,
// attest-heartbeat) verifier v holds about the appliance since since.
func audited(t testing.TB, v *qemu.VerifierProcess, action string, since time.Time) int {
	t.Helper()
	recs, err := v.Audit(context.Background(), applianceID)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Action == action && r.Outcome == "ok" && !r.Time.Before(since.Truncate(time.Second)) {
			n++
		}
	}
	return n
}

// TestE2EThreshold boots the appliance once against three verifier
// processes granting its key 2 of 3 with a 20 s lease: it serves with all
// three answering; with one verifier killed it still serves after that
// verifier's lease has run out (data read back over NBD); with a second
// killed it stops serving and zeroizes within one lease. The console
// names the verifiers that answered.
func TestE2EThreshold(t *testing.T) {
	const lease = 20 * time.Second
	c := newClusterChain(t, verifierNames, 2, lease)
	m := c.boot(t, "")
	c.publish(t, m)
	c.waitServing(t, m, 0)
	for _, name := range verifierNames {
		// A verifier answering after k shares combined is "unused".
		waitAnswer(t, m, 0, name, "(granted|unused)", time.Second)
		if n := audited(t, c.cluster.Verifier(name), "attest-unlock", time.Time{}); n != 1 {
			t.Errorf("verifier %s granted %d unlocks, want 1", name, n)
		}
	}
	data := c.writeRandom(t, m, 4<<20)

	// One verifier down: two leases stay valid.
	from := len(m.Lines())
	if err := c.cluster.Verifier("tartu").Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitAnswer(t, m, from, "tartu", "unreachable", 2*lease)
	if _, err := m.WaitForLineFrom(from, regexp.MustCompile(`msg="lease renewed".*renewed_by=tallinn,narva(\s|$)`), 2*lease); err != nil {
		t.Fatal("no lease renewed by tallinn and narva after tartu was killed: ", err)
	}
	if d := lease + 5*time.Second - time.Since(killed); d > 0 {
		time.Sleep(d) // tartu's last lease has run out by now
	}
	if l, err := m.WaitForLineFrom(from, regexp.MustCompile(`stopped serving`), time.Millisecond); err == nil {
		t.Fatalf("stopped with two of three verifiers up: %s", l.Text)
	}
	if !bytes.Equal(readBack(t, c.uri(m), len(data)), data) {
		t.Fatal("data read back with one verifier down differs")
	}
	for _, name := range []string{"tallinn", "narva"} {
		if n := audited(t, c.cluster.Verifier(name), "attest-heartbeat", killed); n == 0 {
			t.Errorf("verifier %s renewed no lease after tartu was killed", name)
		}
	}
	t.Logf("still serving %v after killing tartu (lease %v); running: %v", time.Since(killed).Round(time.Second), lease, c.cluster.Running())

	// Two down: fewer than k leases left.
	from = len(m.Lines())
	if err := c.cluster.Verifier("narva").Kill(); err != nil {
		t.Fatal(err)
	}
	killed = time.Now()
	l, err := m.WaitForLineFrom(from, regexp.MustCompile(`stopped serving, keys zeroized`), lease+10*time.Second)
	if err != nil {
		t.Fatal("with two of three verifiers down: ", err)
	}
	took := time.Since(killed)
	t.Logf("stopped %v after killing narva: %s", took.Round(time.Second), l.Text)
	if took > lease+2*time.Second {
		t.Errorf("took %v to stop, longer than one lease (%v)", took, lease)
	}
	if err := c.nbdAnswers(t, m); err == nil {
		t.Error("an NBD client got through after the quorum was lost")
	}
	if _, err := m.WaitForLineFrom(from, answerRE("narva", "unreachable"), time.Millisecond); err != nil {
		t.Error("the console does not name narva as unreachable:", err)
	}
}
