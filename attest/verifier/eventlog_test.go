package verifier_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/tpm"
)

// fwEvent is one firmware event for a synthetic TCG2 (crypto-agile) log.
type fwEvent struct {
	pcr  uint32
	typ  uint32
	data []byte
}

// tcgLog encodes events as a TCG PC Client crypto-agile event log with only
// the SHA-256 bank, each event's digest being SHA-256(data).
func tcgLog(events []fwEvent) []byte {
	var b bytes.Buffer
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	// Spec ID event, in the legacy SHA-1 event format.
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, uint32(0)) // platform class
	spec.Write([]byte{0, 2, 0, 2})                      // version 2.0, errata 0, uintn size 2
	binary.Write(&spec, binary.LittleEndian, uint32(1)) // one algorithm
	binary.Write(&spec, binary.LittleEndian, uint16(0x000B))
	binary.Write(&spec, binary.LittleEndian, uint16(32))
	spec.WriteByte(0) // no vendor info
	le(uint32(0))
	le(uint32(3)) // EV_NO_ACTION
	b.Write(make([]byte, 20))
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())
	for _, e := range events {
		d := sha256.Sum256(e.data)
		le(e.pcr)
		le(e.typ)
		le(uint32(1))
		le(uint16(0x000B))
		b.Write(d[:])
		le(uint32(len(e.data)))
		b.Write(e.data)
	}
	return b.Bytes()
}

// TestFirmwareEventLog boots "firmware" that measures real events into
// PCRs 0-7 and logs them: the untouched log verifies, a log with one event
// changed is refused as a tampered event log.
func TestFirmwareEventLog(t *testing.T) {
	f := newFixture(t)
	ap := f.newAppliance("rack1", bootEvents)
	events := []fwEvent{{pcr: 0, typ: 0x8, data: []byte("OVMF 2026")}} // EV_S_CRTM_VERSION
	for _, pcr := range []uint32{0, 1, 2, 3, 5, 6, 7} {                // the baseline PCRs
		events = append(events, fwEvent{pcr: pcr, typ: 0x4, data: []byte{0, 0, 0, 0}}) // EV_SEPARATOR
	}
	for _, e := range events {
		d := sha256.Sum256(e.data)
		if err := tpm.Extend(ap.sw.RW(), int(e.pcr), d[:]); err != nil {
			t.Fatal(err)
		}
	}
	good := tcgLog(events)
	tampered := append([]fwEvent(nil), events...)
	tampered[0] = fwEvent{pcr: 0, typ: 0x8, data: []byte("OVMF evil")}
	bad := tcgLog(tampered)

	logBytes := good
	rebuild := func() {
		a, err := agent.New(agent.Config{Verifiers: f.endpoints(), ApplianceID: ap.id, TPM: ap.sw.RW(), Log: ap.log,
			EventLog: func() ([]byte, error) { return logBytes, nil }})
		if err != nil {
			t.Fatal(err)
		}
		ap.a = a
	}
	rebuild()
	f.register(ap)
	if _, err := ap.a.Enroll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := ap.a.Heartbeat(context.Background(), 0, nil); err != nil {
		t.Fatalf("genuine firmware log refused: %v", err)
	}
	logBytes = bad
	_, err := ap.a.Heartbeat(context.Background(), 0, nil)
	wantRefused(t, err, agent.ErrRefused, "eventlog", -1)
}
