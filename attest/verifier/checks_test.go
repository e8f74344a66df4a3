package verifier

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
)

// The checks below need no database: these tests run them on values.

func pcrVal(b byte) []byte { return bytes.Repeat([]byte{b}, sha256.Size) }

// wantRefusal fails unless err is a refusal by check naming pcr (-1: none):
// its message starts as that of the refusal wanted, without a detail.
func wantRefusal(t *testing.T, err error, code, check string, pcr int) {
	t.Helper()
	want := &Refusal{ErrorResponse: protocol.ErrorResponse{Code: code, Check: check}}
	if pcr >= 0 {
		want.PCR = &pcr
	}
	var ref *Refusal
	if !errors.As(err, &ref) || !strings.HasPrefix(ref.Error(), want.Error()) {
		t.Fatalf("got %v, want %v...", err, want)
	}
}

func TestCheckBaseline(t *testing.T) {
	quoted := map[int][]byte{0: pcrVal(0), 2: pcrVal(2), 7: pcrVal(7)}
	if err := checkBaseline(map[int][]byte{0: pcrVal(0), 7: pcrVal(7)}, quoted); err != nil {
		t.Fatalf("matching baseline refused: %v", err)
	}
	wantRefusal(t, checkBaseline(map[int][]byte{}, quoted), protocol.CodeRefused, "baseline", -1)
	// The lowest differing PCR is named.
	wantRefusal(t, checkBaseline(map[int][]byte{0: pcrVal(0), 2: pcrVal(9), 7: pcrVal(9)}, quoted), protocol.CodeRefused, "baseline", 2)
}

func TestMatchRelease(t *testing.T) {
	quoted := map[int][]byte{4: pcrVal(4), 9: pcrVal(9), 15: pcrVal(15)}
	r1 := policyRelease{digest: "d1", label: "app 1", pcrs: map[int][]byte{4: pcrVal(1), 9: pcrVal(1), 15: pcrVal(1)}}
	r2 := policyRelease{digest: "d2", label: "app 2", pcrs: map[int][]byte{4: pcrVal(4), 9: pcrVal(9), 15: pcrVal(2)}}
	r3 := policyRelease{digest: "d3", label: "app 3", pcrs: map[int][]byte{4: pcrVal(4), 9: pcrVal(9), 15: pcrVal(15)}}
	_, err := matchRelease(nil, quoted)
	wantRefusal(t, err, protocol.CodeRefused, "release", -1)
	got, err := matchRelease([]policyRelease{r1, r2, r3}, quoted)
	if err != nil || got.digest != "d3" {
		t.Fatalf("matchRelease = %+v, %v; want d3", got, err)
	}
	// No match: the closest release (r2, one PCR off) names PCR 15.
	_, err = matchRelease([]policyRelease{r1, r2}, quoted)
	wantRefusal(t, err, protocol.CodeRefused, "release", 15)
	if ref := err.(*Refusal); !bytes.Contains([]byte(ref.Detail), []byte(`"app 2"`)) {
		t.Fatalf("refusal %q does not name the closest release", ref.Detail)
	}
}

func TestSealTargetsAndBoundPCRs(t *testing.T) {
	quoted := map[int][]byte{tpm.PCRAppliance: pcrVal(15), tpm.PCRPhase: pcrVal(0)}
	for _, i := range tpm.FirmwarePCRs {
		quoted[i] = pcrVal(byte(i))
	}
	cur := policyRelease{digest: "d1", label: "app 1", pcrs: map[int][]byte{tpm.PCRAppliance: pcrVal(15)}}
	next := policyRelease{digest: "d2", label: "app 2", pcrs: map[int][]byte{tpm.PCRAppliance: pcrVal(0x25)}}
	bind := boundPCRs(&cur, quoted)
	if len(bind) != len(tpm.FirmwarePCRs)+2 || !bytes.Equal(bind[uint32(tpm.PCRPhase)], make([]byte, sha256.Size)) || !bytes.Equal(bind[uint32(tpm.PCRAppliance)], pcrVal(15)) {
		t.Fatalf("bound PCRs %x", bind)
	}
	st := sealTargets([]policyRelease{cur, next}, &cur, quoted)
	if len(st) != 1 || st[0].Release != "app 2" || len(st[0].PCRs) != len(bind) {
		t.Fatalf("seal targets %+v", st)
	}
	if st[0].PCRs["15"] != hex.EncodeToString(pcrVal(0x25)) {
		t.Fatalf("seal target PCR 15 = %s", st[0].PCRs["15"])
	}
}

func TestCheckNonceRecord(t *testing.T) {
	now := time.Unix(1000, 0)
	fresh := &nonceRecord{appliance: "a", expires: now.Add(time.Second)}
	if err := checkNonceRecord(fresh, "a", now); err != nil {
		t.Fatalf("fresh nonce refused: %v", err)
	}
	for name, c := range map[string]struct {
		rec *nonceRecord
		id  string
	}{
		"unknown": {nil, "a"},
		"other":   {fresh, "b"},
		"used":    {&nonceRecord{appliance: "a", expires: now.Add(time.Second), used: true}, "a"},
		"expired": {&nonceRecord{appliance: "a", expires: now.Add(-time.Second)}, "a"},
	} {
		t.Run(name, func(t *testing.T) {
			wantRefusal(t, checkNonceRecord(c.rec, c.id, now), protocol.CodeRefused, "nonce", -1)
		})
	}
}

func TestAdmit(t *testing.T) {
	if err := admit("a", 3, decisionState{nonceFresh: true, lastEpoch: 3}); err != nil {
		t.Fatalf("same epoch refused: %v", err)
	}
	wantRefusal(t, admit("a", 3, decisionState{lastEpoch: 3}), protocol.CodeRefused, "nonce", -1)
	wantRefusal(t, admit("a", 3, decisionState{nonceFresh: true, revoked: true}), protocol.CodeRevoked, "revocation", -1)
	wantRefusal(t, admit("a", 2, decisionState{nonceFresh: true, lastEpoch: 3}), protocol.CodeRefused, "epoch", -1)
}

func TestCheckPhase(t *testing.T) {
	zero := map[int][]byte{tpm.PCRPhase: make([]byte, sha256.Size)}
	moved := map[int][]byte{tpm.PCRPhase: pcrVal(1)}
	if checkPhase(protocol.PurposeUnlock, zero) != nil || checkPhase(protocol.PurposeHeartbeat, moved) != nil {
		t.Fatal("phase refused at zero, or for a heartbeat")
	}
	wantRefusal(t, checkPhase(protocol.PurposeUnlock, moved), protocol.CodeRefused, "phase", tpm.PCRPhase)
}
