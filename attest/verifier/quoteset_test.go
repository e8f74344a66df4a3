package verifier_test

import (
	"crypto/sha256"
	"testing"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/google/go-tpm-tools/client"
	"google.golang.org/protobuf/proto"
)

// TestQuoteSet: one quote made for several verifiers (extraData =
// QuoteSetData of their QuoteData) is accepted by a verifier whose own
// QuoteData is in the set; a set without it, a quote over something other
// than the set, a set the quote does not cover, and malformed sets are
// refused.
func TestQuoteSet(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	c := f.raw()
	other := sha256.Sum256([]byte("another verifier's request"))
	// present asks for a nonce, quotes over quoted(own QuoteData) and
	// presents the request with set(own).
	present := func(set func(own []byte) [][]byte, quoted func(own []byte) []byte) *protocol.ErrorResponse {
		t.Helper()
		req := quote(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 0)
		own := protocol.QuoteData(req.Nonce, ap.id, req.Purpose, req.StoreEpoch, nil)
		ak, err := client.AttestationKeyRSA(ap.sw.RW())
		if err != nil {
			t.Fatal(err)
		}
		defer ak.Close()
		att, err := ak.Attest(client.AttestOpts{Nonce: quoted(own), TCGEventLog: []byte{}, SkipTeeAttestation: true})
		if err != nil {
			t.Fatal(err)
		}
		req.Attestation, _ = proto.Marshal(att)
		req.QuoteSet = set(own)
		_, e := c.attest(req)
		return e
	}
	both := func(own []byte) [][]byte { return [][]byte{other[:], own} }
	overBoth := func(own []byte) []byte { return protocol.QuoteSetData(both(own)) }
	if e := present(both, overBoth); e != nil {
		t.Fatalf("a quote for this and another verifier: refused %+v", e)
	}
	onlyOther := func([]byte) [][]byte { return [][]byte{other[:]} }
	expectRefusal(t, present(onlyOther, func([]byte) []byte { return protocol.QuoteSetData(onlyOther(nil)) }), protocol.CodeRefused, "quote", -1)
	expectRefusal(t, present(both, func(own []byte) []byte { return own }), protocol.CodeRefused, "quote", -1)
	expectRefusal(t, present(func([]byte) [][]byte { return nil }, overBoth), protocol.CodeRefused, "quote", -1)
	reversed := func(own []byte) [][]byte { return [][]byte{own, other[:]} }
	expectRefusal(t, present(reversed, overBoth), protocol.CodeRefused, "quote", -1)
	for name, set := range map[string]func([]byte) [][]byte{
		"short entry": func(own []byte) [][]byte { return [][]byte{own, other[:31]} },
		"duplicate":   func(own []byte) [][]byte { return [][]byte{own, own} },
		"17 entries": func(own []byte) [][]byte {
			s := [][]byte{own}
			for i := range 16 {
				d := sha256.Sum256([]byte{byte(i)})
				s = append(s, d[:])
			}
			return s
		},
	} {
		if e := present(set, overBoth); e == nil || e.Code != protocol.CodeBadRequest {
			t.Errorf("%s: %+v, want bad_request", name, e)
		}
	}
}
