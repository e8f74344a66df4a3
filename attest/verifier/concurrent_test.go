package verifier_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dataembassy/embassy/attest/protocol"
)

// TestConcurrentReplay presents one quote (one nonce) from many clients at
// once, next to other appliances' legitimate attestations: exactly one of
// the replays succeeds, every legitimate one does, and the audit chain
// stays linear.
func TestConcurrentReplay(t *testing.T) {
	f := newFixture(t)
	a1, a2 := f.enrolled("rack1"), f.enrolled("rack2")
	c := f.raw()
	replayed, _ := json.Marshal(quote(t, a1, c.nonce(a1.id), protocol.PurposeHeartbeat, 0))
	var legit [][]byte
	for i := 0; i < 12; i++ {
		b, _ := json.Marshal(quote(t, a2, c.nonce(a2.id), protocol.PurposeHeartbeat, 0))
		legit = append(legit, b)
	}
	var replayOK, legitOK atomic.Int32
	var wg sync.WaitGroup
	post := func(body []byte, ok *atomic.Int32) {
		defer wg.Done()
		res, err := c.hc.Post(f.srv.URL+protocol.PathAttest, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Error(err)
			return
		}
		res.Body.Close()
		if res.StatusCode == http.StatusOK {
			ok.Add(1)
		}
	}
	for i := 0; i < 12; i++ {
		wg.Add(2)
		go post(replayed, &replayOK)
		go post(legit[i], &legitOK)
	}
	wg.Wait()
	if replayOK.Load() != 1 {
		t.Errorf("%d of 12 concurrent uses of one nonce succeeded, want 1", replayOK.Load())
	}
	if legitOK.Load() != 12 {
		t.Errorf("%d of 12 legitimate attestations succeeded", legitOK.Load())
	}
	rep, err := f.db.VerifyAudit(t.Context(), 0, "")
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("audit chain: %+v %v", rep, err)
	}
}
