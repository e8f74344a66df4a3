package measure_test

import (
	"testing"

	"github.com/dataembassy/embassy/attest/measure"
)

// TestApplianceEvents pins the appliance's measurement plan: a change here
// changes every release's PCR 15.
func TestApplianceEvents(t *testing.T) {
	bin, cfg := []byte("binary bytes"), []byte(`{"id":"rack1"}`)
	want := []measure.Event{
		measure.NewEvent("binary", "/bin/embassy-appliance", bin),
		measure.NewEvent("config", "/etc/embassy/appliance.json", cfg),
	}
	if m := measure.Compare(measure.ApplianceEvents(bin, cfg), want); m != nil {
		t.Fatalf("ApplianceEvents differs at %d: got %+v, want %+v", m.Index, m.Got, m.Want)
	}
	for i, s := range measure.AppliancePlan(bin, cfg) {
		if s.Event() != want[i] {
			t.Errorf("AppliancePlan[%d] = %s %s, want %+v", i, s.Type, s.Name, want[i])
		}
	}
	if measure.BinaryPath != "/"+measure.BinaryFile || measure.ConfigPath != "/"+measure.ConfigFile {
		t.Errorf("paths %s %s do not match the initramfs files %s %s", measure.BinaryPath, measure.ConfigPath, measure.BinaryFile, measure.ConfigFile)
	}
}
