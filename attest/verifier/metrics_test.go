package verifier_test

import (
	"context"
	"math"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/promutil/promtest"
)

// scrape fetches h's metrics and parses them with the Prometheus text
// parser.
func scrape(t *testing.T, h *httptest.Server) promtest.Families {
	t.Helper()
	res, err := h.Client().Get(h.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type %q", ct)
	}
	fams, err := promtest.ParseResponse(res)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// metricsFixture is a fixture whose server records into Metrics served by
// an HTTP test server.
func metricsFixture(t *testing.T) (*fixture, *httptest.Server) {
	t.Helper()
	f := newFixture(t)
	m := verifier.NewMetrics()
	f.opts.Metrics = m
	f.restart()
	h := httptest.NewServer(m.Handler())
	t.Cleanup(h.Close)
	return f, h
}

func TestMetricsCountAttestations(t *testing.T) {
	f, h := metricsFixture(t)
	ap := f.enrolled("rack1")
	c := f.raw()

	before := scrape(t, h)
	if v, ok := before.Sample("embassy_verifier_up"); !ok || v != 1 {
		t.Fatalf("embassy_verifier_up %v %v, want 1", v, ok)
	}
	if _, ok := before.Sample("embassy_verifier_appliance_last_attestation_timestamp_seconds", "appliance", "rack1"); ok {
		t.Fatal("last attestation exported before any attestation")
	}
	if v, _ := before.Sample("embassy_verifier_appliance_lease_remaining_seconds", "appliance", "rack1"); v != 0 {
		t.Fatalf("lease remaining %v before any attestation", v)
	}

	// One accepted heartbeat, then the same request again: refused (nonce).
	req := quote(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 3)
	if _, e := c.attest(req); e != nil {
		t.Fatalf("heartbeat refused: %+v", e)
	}
	_, e := c.attest(req)
	expectRefusal(t, e, protocol.CodeRefused, "nonce", -1)
	// Evidence that does not parse: bad_request, no check reached.
	garbled := quote(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 3)
	garbled.Attestation = []byte{0xff, 0xff}
	_, e = c.attest(garbled)
	expectRefusal(t, e, protocol.CodeBadRequest, "", -1)

	after := scrape(t, h)
	if _, ok := after.Sample("embassy_verifier_attestation_refusals_total", "check", "", "purpose", "heartbeat"); ok {
		t.Error("a bad request counted as a refusal without a check")
	}
	counters := []struct {
		name   string
		labels []string
		delta  float64
	}{
		{"embassy_verifier_attestations_total", []string{"outcome", "ok", "purpose", "heartbeat"}, 1},
		{"embassy_verifier_attestations_total", []string{"outcome", "refused", "purpose", "heartbeat"}, 1},
		{"embassy_verifier_attestations_total", []string{"outcome", "revoked", "purpose", "heartbeat"}, 0},
		{"embassy_verifier_attestations_total", []string{"outcome", "ok", "purpose", "unlock"}, 0},
		{"embassy_verifier_attestation_refusals_total", []string{"check", "nonce", "purpose", "heartbeat"}, 1},
		{"embassy_verifier_attestations_total", []string{"outcome", "bad_request", "purpose", "heartbeat"}, 1},
		{"embassy_verifier_attestation_duration_seconds", []string{"purpose", "heartbeat"}, 3},
		{"embassy_verifier_attestation_duration_seconds", []string{"purpose", "unlock"}, 0},
	}
	for _, k := range counters {
		b, _ := before.Sample(k.name, k.labels...)
		a, ok := after.Sample(k.name, k.labels...)
		if !ok || a-b != k.delta {
			t.Errorf("%s%v: %v -> %v (present %v), want +%v", k.name, k.labels, b, a, ok, k.delta)
		}
	}
	// The fixture's clock stands still: the lease is the whole 10 minutes
	// (the database keeps whole seconds).
	gauges := []struct {
		name     string
		min, max float64
	}{
		{"embassy_verifier_appliance_last_attestation_timestamp_seconds", float64(f.now.Unix()), float64(f.now.Unix())},
		{"embassy_verifier_appliance_lease_remaining_seconds", 599, 600},
		{"embassy_verifier_appliance_revoked", 0, 0},
		{"embassy_verifier_appliance_store_epoch", 3, 3},
	}
	for _, g := range gauges {
		v, ok := after.Sample(g.name, "appliance", "rack1")
		if !ok || v < g.min || v > g.max {
			t.Errorf("%s{rack1} = %v (present %v), want %v..%v", g.name, v, ok, g.min, g.max)
		}
	}

	// Revoked: the next attestation (its nonce taken before) counts as
	// revoked and the gauges show it.
	nonce := c.nonce(ap.id)
	if err := f.db.Revoke(context.Background(), ap.id, "test", "test"); err != nil {
		t.Fatal(err)
	}
	_, e = c.attest(quote(t, ap, nonce, protocol.PurposeHeartbeat, 3))
	expectRefusal(t, e, protocol.CodeRevoked, "revocation", -1)
	revoked := scrape(t, h)
	for _, k := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"embassy_verifier_attestations_total", []string{"outcome", "revoked", "purpose", "heartbeat"}, 1},
		{"embassy_verifier_attestation_refusals_total", []string{"check", "revocation", "purpose", "heartbeat"}, 1},
		{"embassy_verifier_appliance_revoked", []string{"appliance", "rack1"}, 1},
		{"embassy_verifier_appliance_lease_remaining_seconds", []string{"appliance", "rack1"}, 0},
		{"embassy_verifier_appliance_last_refusal_timestamp_seconds", []string{"appliance", "rack1"}, float64(f.now.UnixMilli()) / 1e3},
	} {
		if v, ok := revoked.Sample(k.name, k.labels...); !ok || math.Abs(v-k.want) > 1e-3 {
			t.Errorf("%s%v = %v (present %v), want %v", k.name, k.labels, v, ok, k.want)
		}
	}
}

// TestMetricsAccepted counts an unlock and a heartbeat made by the agent.
func TestMetricsAccepted(t *testing.T) {
	f, h := metricsFixture(t)
	ap, _ := f.unlocked("rack1")
	if _, err := ap.a.Heartbeat(context.Background(), 1, nil); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	fams := scrape(t, h)
	for _, purpose := range []string{"unlock", "heartbeat"} {
		if v, ok := fams.Sample("embassy_verifier_attestations_total", "outcome", "ok", "purpose", purpose); !ok || v != 1 {
			t.Errorf("%s ok = %v, want 1", purpose, v)
		}
	}
	if f := fams["embassy_verifier_attestation_refusals_total"]; f != nil && len(f.GetMetric()) > 0 {
		t.Errorf("refusals counted: %v", f)
	}
	if v, _ := fams.Sample("embassy_verifier_appliance_store_epoch", "appliance", "rack1"); v != 1 {
		t.Errorf("store epoch %v, want 1", v)
	}
	if _, ok := fams.Sample("embassy_verifier_build_info"); ok {
		t.Error("build info without labels")
	}
	if f := fams["embassy_verifier_build_info"]; f == nil || f.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("build info: %v", f)
	}
	if fams["go_goroutines"] == nil || fams["process_start_time_seconds"] == nil {
		t.Error("Go runtime or process metrics missing")
	}
}

// TestMetricsWithoutServer: metrics not yet given to a Server report the
// verifier down and nothing per appliance.
func TestMetricsWithoutServer(t *testing.T) {
	h := httptest.NewServer(verifier.NewMetrics().Handler())
	defer h.Close()
	fams := scrape(t, h)
	if v, ok := fams.Sample("embassy_verifier_up"); !ok || v != 0 {
		t.Fatalf("embassy_verifier_up = %v (present %v), want 0", v, ok)
	}
	if fams["embassy_verifier_appliance_revoked"] != nil {
		t.Fatal("per-appliance gauges without a database")
	}
}
