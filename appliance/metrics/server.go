package metrics

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/internal/promutil"
)

// ErrNotServing is the TLS handshake error while the appliance holds no
// server identity (not unlocked, or stopped after a refusal).
var ErrNotServing = errors.New("metrics: appliance not serving: no server identity")

func errorf(format string, a ...any) error { return fmt.Errorf("metrics: "+format, a...) }

// listener is the open metrics listener.
type listener struct {
	ln  net.Listener
	srv *http.Server
}

// Handler serves the metrics in the Prometheus text exposition format
// (without TLS: the listener adds it).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promutil.Handler(m.reg))
	return mux
}

// listen opens the HTTPS listener on cfg.Listen and serves Handler on it
// until Close. Called with m.mu held.
func (m *Metrics) listen() (*listener, error) {
	pool, err := appliance.ParseCertPool(m.cfg.ClientCAPEM)
	if err != nil {
		return nil, errorf("client CA: %w", err)
	}
	ln, err := net.Listen("tcp", m.cfg.Listen)
	if err != nil {
		return nil, errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler: m.Handler(),
		TLSConfig: &tls.Config{
			GetCertificate: m.certificate,
			ClientCAs:      pool,
			ClientAuth:     tls.RequireAndVerifyClientCert,
			MinVersion:     tls.VersionTLS13,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// Refused handshakes (no or a foreign client certificate, not
		// serving) are the scrapers' to see: Debug, off the console.
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
	}
	// Every scrape shakes hands anew, so that once the appliance stops
	// serving (no identity: ErrNotServing) no kept-alive connection
	// scrapes on; a scrape every few seconds costs one handshake each.
	srv.SetKeepAlivesEnabled(false)
	go srv.ServeTLS(ln, "", "")
	m.log.Info("serving metrics", "addr", ln.Addr().String())
	return &listener{ln: ln, srv: srv}, nil
}

// certificate presents the current server identity.
func (m *Metrics) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.id == nil {
		return nil, ErrNotServing
	}
	return &m.id.Certificate, nil
}

// Addr is the listener's address, "" before the first Serving.
func (m *Metrics) Addr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv == nil {
		return ""
	}
	return m.srv.ln.Addr().String()
}

// Close closes the listener and its connections; a later Serving does not
// open it again.
func (m *Metrics) Close() error {
	m.mu.Lock()
	srv := m.srv
	m.srv, m.closed = nil, true
	m.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.srv.Shutdown(ctx)
}
