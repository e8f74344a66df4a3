package measure_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
)

func TestMeasureReplayMatchesTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	rw := sw.RW()
	var log measure.Log
	events := []measure.Event{
		measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("binary bytes")),
		measure.NewEvent("config", "/etc/embassy/appliance.json", []byte(`{"id":"rack1"}`)),
	}
	for _, e := range events {
		if err := log.Measure(rw, e); err != nil {
			t.Fatal(err)
		}
	}
	pcrs, err := tpm.ReadPCRs(rw, []int{tpm.PCRAppliance})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := log.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := measure.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := measure.Replay(parsed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pcrs[tpm.PCRAppliance]) {
		t.Fatalf("replay %x != PCR 15 %x", got, pcrs[tpm.PCRAppliance])
	}
	pred, err := measure.Replay(events)
	if err != nil || !bytes.Equal(pred, got) {
		t.Fatalf("Replay of the events measured = %x, %v", pred, err)
	}
	// Any change to an event changes the replayed value.
	tampered := append([]measure.Event(nil), parsed...)
	tampered[1].Name = "/etc/embassy/other.json"
	other, err := measure.Replay(tampered)
	if err != nil || bytes.Equal(other, got) {
		t.Fatalf("tampered log replays to the same value: %v", err)
	}
	if m := measure.Compare(tampered, events); m == nil || m.Index != 1 {
		t.Fatalf("Compare = %+v, want index 1", m)
	}
}

func TestParseRejects(t *testing.T) {
	tests := map[string]string{
		"empty":         ``,
		"wrong version": `{"version":2,"events":[]}`,
		"unknown field": `{"version":1,"events":[],"x":1}`,
		"bad digest":    `{"version":1,"events":[{"type":"binary","name":"a","sha256":"zz"}]}`,
		"empty type":    `{"version":1,"events":[{"type":"","name":"a","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}`,
		"trailing":      `{"version":1,"events":[]} {}`,
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := measure.Parse([]byte(in)); !errors.Is(err, measure.ErrFormat) {
				t.Fatalf("got %v, want ErrFormat", err)
			}
		})
	}
}

// FuzzParse checks that arbitrary logs never panic, and that every accepted
// log replays and re-encodes to itself.
func FuzzParse(f *testing.F) {
	var l measure.Log
	raw, _ := l.Marshal()
	f.Add(raw)
	f.Add([]byte(`{"version":1,"events":[{"type":"binary","name":"/init","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := measure.Parse(data)
		if err != nil {
			return
		}
		if _, err := measure.Replay(ev); err != nil {
			t.Fatalf("accepted log does not replay: %v", err)
		}
	})
}
