// Package metrics is the appliance's Prometheus exporter (docs/metrics.md):
// NBD requests, bytes, latency and errors by export and command (Metrics
// is the NBD server's nbd.Observer), the served store's epoch, monotonic
// counter and integrity failures, each verifier's lease and whether the
// appliance serves (Metrics is the boot sequence's appliance.Monitor).
//
// The metrics listener (server.go) is HTTPS with mutual TLS: its
// certificate is the appliance's NBD server identity, derived from the KEK
// (appliance.DeriveServerIdentity), so it answers only while the appliance
// is unlocked and serving; scrapers must present a certificate chaining
// to the configured client CA. This package does not import storage/nbd:
// it implements the Observer by its method.
package metrics

import (
	"log/slog"
	"sync"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/internal/promutil"
	"github.com/dataembassy/embassy/storage"
	"github.com/prometheus/client_golang/prometheus"
)

// StoreState is what the store gauges read from the served store at
// scrape time; *storage.Store implements it. A served store that does not
// is exported without store gauges.
type StoreState interface {
	// Info gives the committed epoch, the monotonic-counter value the
	// store is bound to and the size.
	Info() storage.Info
	// Stats gives the integrity failures since the store was opened.
	Stats() storage.Stats
}

// Options configure Metrics.
type Options struct {
	// Config is the metrics section of the appliance configuration.
	// Required.
	Config *appliance.MetricsConfig
	// Logger receives listener errors (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock leases are measured by (default time.Now).
	Now func() time.Time
}

// Metrics collect the appliance's metrics and serve them (Serving opens
// the listener). Create with New. Safe for concurrent use.
type Metrics struct {
	cfg *appliance.MetricsConfig
	log *slog.Logger
	now func() time.Time
	reg *prometheus.Registry

	requests, bytes, errors *prometheus.CounterVec
	duration                *prometheus.HistogramVec
	series                  sync.Map // seriesKey -> *series

	mu      sync.Mutex
	store   StoreState // nil when not serving
	id      *appliance.ServerIdentity
	serving bool
	leases  map[string]time.Time // verifier -> its lease's end
	quorum  time.Time            // the quorum lease's end
	srv     *listener            // opened by the first Serving
	closed  bool                 // by Close
}

// seriesKey names one export and command's series.
type seriesKey struct{ export, command string }

// series are one export and command's children of the request metrics,
// looked up once: the request path then pays no label hashing.
type series struct {
	requests, bytes, errors prometheus.Counter
	duration                prometheus.Observer
}

// New returns the appliance's metrics in a registry of their own, which
// also holds the Go runtime, process and build information collectors.
func New(opts Options) (*Metrics, error) {
	if opts.Config == nil {
		return nil, errorf("Options.Config is required")
	}
	if _, err := appliance.ParseCertPool(opts.Config.ClientCAPEM); err != nil {
		return nil, errorf("client CA: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	labels := []string{"export", "command"}
	m := &Metrics{
		cfg: opts.Config, log: opts.Logger, now: opts.Now, reg: promutil.NewRegistry("appliance"),
		leases: map[string]time.Time{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "embassy_nbd_requests_total", Help: "NBD requests served, by export and command.",
		}, labels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "embassy_nbd_bytes_total", Help: "Payload bytes read or written by successful NBD requests, by export and command.",
		}, labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "embassy_nbd_errors_total", Help: "NBD requests answered with an error (refused or failed), by export and command.",
		}, labels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "embassy_nbd_request_duration_seconds",
			Help:    "Time from an NBD request read to its reply ready, by export and command.",
			Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, labels),
	}
	m.reg.MustRegister(m.requests, m.bytes, m.errors, m.duration, stateCollector{m})
	return m, nil
}

// Registry is the registry served, for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Request implements nbd.Observer.
func (m *Metrics) Request(export, command string, bytes int, d time.Duration, err error) {
	k := seriesKey{export, command}
	v, ok := m.series.Load(k)
	if !ok {
		v, _ = m.series.LoadOrStore(k, &series{
			requests: m.requests.WithLabelValues(export, command),
			bytes:    m.bytes.WithLabelValues(export, command),
			errors:   m.errors.WithLabelValues(export, command),
			duration: m.duration.WithLabelValues(export, command),
		})
	}
	s := v.(*series)
	s.requests.Inc()
	if bytes > 0 {
		s.bytes.Add(float64(bytes))
	}
	if err != nil {
		s.errors.Inc()
	}
	s.duration.Observe(d.Seconds())
}

// Leases implements appliance.Monitor: a granted or renewed lease ends
// its Lease from now, a refusal or revocation ends the verifier's lease
// now, and an unreachable or unused verifier's lease runs on.
func (m *Metrics) Leases(answers []appliance.Answer, quorum time.Duration) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range answers {
		switch a.Outcome {
		case appliance.OutcomeGranted, appliance.OutcomeRenewed:
			m.leases[a.Verifier] = now.Add(a.Lease)
		case appliance.OutcomeRefused, appliance.OutcomeRevoked:
			m.leases[a.Verifier] = now
		}
	}
	m.quorum = now.Add(quorum)
}

// Serving implements appliance.Monitor: the store gauges read store, the
// listener presents id, and the first call opens the listener. A failure
// to listen is logged: metrics never stop the appliance from serving.
func (m *Metrics) Serving(store appliance.Store, id *appliance.ServerIdentity) {
	st, _ := store.(StoreState)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store, m.id, m.serving = st, id, true
	if m.srv == nil && !m.closed {
		srv, err := m.listen()
		if err != nil {
			m.log.Error("metrics: not serving metrics", "err", err)
			return
		}
		m.srv = srv
	}
}

// Stopped implements appliance.Monitor: the store and the identity, about
// to be wiped, are let go of, so the listener refuses handshakes until the
// next Serving.
func (m *Metrics) Stopped() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store, m.id, m.serving = nil, nil, false
	m.quorum = time.Time{}
	clear(m.leases)
}

var (
	descServing = prometheus.NewDesc("embassy_appliance_serving",
		"1 while the appliance serves its store over NBD, else 0.", nil, nil)
	descLease = prometheus.NewDesc("embassy_appliance_lease_remaining_seconds",
		"Seconds until the verifier's lease ends, as of its last answer; 0 once ended.", []string{"verifier"}, nil)
	descQuorum = prometheus.NewDesc("embassy_appliance_quorum_lease_remaining_seconds",
		"Seconds until fewer than k verifiers' leases remain valid: the appliance stops serving then unless renewed.", nil, nil)
	descEpoch = prometheus.NewDesc("embassy_store_epoch",
		"The served store's committed epoch.", nil, nil)
	descCounter = prometheus.NewDesc("embassy_store_nv_counter",
		"The monotonic-counter (TPM NV counter) value the served store is bound to.", nil, nil)
	descIntegrity = prometheus.NewDesc("embassy_store_integrity_errors_total",
		"Blocks and metadata blocks of the served store that failed authentication since it was opened.", nil, nil)
	descSize = prometheus.NewDesc("embassy_store_size_bytes",
		"The served store's logical size.", nil, nil)
)

// stateCollector reads the gauges at scrape time.
type stateCollector struct{ m *Metrics }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descServing, descLease, descQuorum, descEpoch, descCounter, descIntegrity, descSize} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	now := m.now()
	left := func(until time.Time) float64 { return max(until.Sub(now), 0).Seconds() }
	m.mu.Lock()
	st, serving, quorum := m.store, m.serving, m.quorum
	leases := make(map[string]float64, len(m.leases))
	for v, until := range m.leases {
		leases[v] = left(until)
	}
	m.mu.Unlock()

	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	on := 0.0
	if serving {
		on = 1
	}
	gauge(descServing, on)
	gauge(descQuorum, left(quorum))
	for v, s := range leases {
		gauge(descLease, s, v)
	}
	if st == nil {
		return
	}
	info, stats := st.Info(), st.Stats()
	gauge(descEpoch, float64(info.Epoch))
	gauge(descCounter, float64(info.Counter))
	gauge(descSize, float64(info.Size))
	ch <- prometheus.MustNewConstMetric(descIntegrity, prometheus.CounterValue, float64(stats.IntegrityFailures))
}
