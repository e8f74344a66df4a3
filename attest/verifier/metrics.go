package verifier

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/internal/promutil"
	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of an attestation in embassy_verifier_attestations_total: "ok"
// (admitted), a refusal's protocol code (protocol.CodeRefused,
// CodeRevoked, CodeNotEnrolled, CodeBadRequest), or OutcomeError when the
// verifier failed.
const OutcomeError = "error"

// scrapeTimeout bounds the database read made at each scrape.
const scrapeTimeout = 10 * time.Second

// Metrics are the verifier's Prometheus metrics (docs/metrics.md). Create
// them with NewMetrics, hand them to NewServer in Options.Metrics, and
// serve Handler on a listener operators' Prometheus can reach. The counters
// record what the Server decides; the per-appliance gauges are read from
// the Server's database at every scrape. Safe for concurrent use.
type Metrics struct {
	reg          *prometheus.Registry
	attestations *prometheus.CounterVec
	refusals     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	src          atomic.Pointer[source] // of the last Server built with these Metrics
}

// source is where the per-appliance gauges come from.
type source struct {
	db  *DB
	log *slog.Logger
}

// NewMetrics returns the verifier's metrics in a registry of their own,
// which also holds the Go runtime, process and build information
// collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: promutil.NewRegistry("verifier"),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "embassy_verifier_attestations_total",
			Help: "Attestations decided, by purpose (unlock, heartbeat) and outcome (ok, refused, revoked, not_enrolled, bad_request, error).",
		}, []string{"purpose", "outcome"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "embassy_verifier_attestation_refusals_total",
			Help: "Attestations refused, by purpose and the check that failed (docs/attestation.md).",
		}, []string{"purpose", "check"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "embassy_verifier_attestation_duration_seconds",
			Help:    "Time to decide an attestation, from the decoded request to the decision recorded, by purpose.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"purpose"}),
	}
	// Every purpose and outcome is exported from the start, at zero, so
	// that rate() sees the first increment.
	for _, p := range []protocol.Purpose{protocol.PurposeUnlock, protocol.PurposeHeartbeat} {
		for _, o := range []string{"ok", protocol.CodeRefused, protocol.CodeRevoked, protocol.CodeNotEnrolled, protocol.CodeBadRequest, OutcomeError} {
			m.attestations.WithLabelValues(string(p), o)
		}
		m.duration.WithLabelValues(string(p))
	}
	m.reg.MustRegister(m.attestations, m.refusals, m.duration, applianceCollector{m})
	return m
}

// Registry is the registry Handler serves, for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text exposition format.
func (m *Metrics) Handler() http.Handler { return promutil.Handler(m.reg) }

// bind makes the per-appliance gauges read db, logging a failed read to
// log (NewServer calls it).
func (m *Metrics) bind(db *DB, log *slog.Logger) { m.src.Store(&source{db, log}) }

// attestation records one decided attestation: err is what attest
// returned.
func (m *Metrics) attestation(purpose protocol.Purpose, err error, took time.Duration) {
	if m == nil {
		return
	}
	p := string(purpose)
	outcome := "ok"
	var ref *Refusal
	switch {
	case errors.As(err, &ref) && ref.Code == protocol.CodeBadRequest:
		// Evidence that does not parse: no check was reached.
		outcome = ref.Code
	case errors.As(err, &ref):
		outcome = ref.Code
		m.refusals.WithLabelValues(p, ref.Check).Inc()
	case err != nil:
		outcome = OutcomeError
	}
	m.attestations.WithLabelValues(p, outcome).Inc()
	m.duration.WithLabelValues(p).Observe(took.Seconds())
}

var (
	descUp = prometheus.NewDesc("embassy_verifier_up",
		"1 when this scrape could read the verifier's database, else 0 (and no per-appliance metrics).", nil, nil)
	descLastAttested = prometheus.NewDesc("embassy_verifier_appliance_last_attestation_timestamp_seconds",
		"When the verifier last admitted an attestation of the appliance (Unix time); absent if never.", []string{"appliance"}, nil)
	descLastRefusal = prometheus.NewDesc("embassy_verifier_appliance_last_refusal_timestamp_seconds",
		"When the newest refusal since the last admitted attestation was made (Unix time); absent if none since.", []string{"appliance"}, nil)
	descLease = prometheus.NewDesc("embassy_verifier_appliance_lease_remaining_seconds",
		"Seconds until the appliance's lease at this verifier ends; 0 without a valid lease.", []string{"appliance"}, nil)
	descRevoked = prometheus.NewDesc("embassy_verifier_appliance_revoked",
		"1 if the appliance is revoked, else 0.", []string{"appliance"}, nil)
	descEpoch = prometheus.NewDesc("embassy_verifier_appliance_store_epoch",
		"The newest store epoch the appliance reported in an admitted attestation.", []string{"appliance"}, nil)
)

// applianceCollector reads the per-appliance gauges from the database at
// scrape time.
type applianceCollector struct{ m *Metrics }

func (c applianceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descLastAttested, descLastRefusal, descLease, descRevoked, descEpoch} {
		ch <- d
	}
}

func (c applianceCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.m.src.Load()
	if src == nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	list, err := src.db.Appliances(ctx)
	if err != nil {
		src.log.Error("verifier: metrics: reading appliances", "err", err)
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	now := src.db.now()
	gauge := func(d *prometheus.Desc, v float64, id string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, id)
	}
	for _, a := range list {
		if a.LastAttested != nil {
			gauge(descLastAttested, unixSeconds(*a.LastAttested), a.ID)
		}
		if a.LastRefusal != nil {
			gauge(descLastRefusal, unixSeconds(a.LastRefusal.Time), a.ID)
		}
		var left time.Duration
		if a.LeaseUntil != nil && a.Revoked == nil {
			left = max(a.LeaseUntil.Sub(now), 0)
		}
		gauge(descLease, left.Seconds(), a.ID)
		revoked := 0.0
		if a.Revoked != nil {
			revoked = 1
		}
		gauge(descRevoked, revoked, a.ID)
		gauge(descEpoch, float64(a.LastEpoch), a.ID)
	}
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
