package qemu_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/internal/promutil/promtest"
	"github.com/dataembassy/embassy/qemu"
)

// scraper is a Prometheus scraper's client certificate and the CA that
// issued it (the appliance's metrics.client_ca_pem).
type scraper struct {
	caPEM string
	cert  tls.Certificate
}

func newScraper(t testing.TB) *scraper {
	t.Helper()
	ca, err := pki.NewCA("Embassy scrapers CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: "prometheus", Usage: pki.Client, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return &scraper{caPEM: string(ca.CertPEM()), cert: leaf.TLSCertificate()}
}

// metricsClient is an HTTPS client that verifies the appliance against
// the server identity the chain pinned for its NBD clients (certs/
// ca-cert.pem, as libnbd does, for the host 127.0.0.1) and presents
// certs as its client certificates.
func (c *chain) metricsClient(t testing.TB, certs []tls.Certificate) *http.Client {
	t.Helper()
	pinned, err := os.ReadFile(filepath.Join(c.certs, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pinned) {
		t.Fatal("no certificate in the pinned server identity")
	}
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs},
	}}
}

// scrapeWith GETs /metrics from m's forwarded metrics port with client.
func scrapeWith(client *http.Client, m *qemu.Machine) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "https://"+m.HostAddr(metricsPort)+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	return client.Do(req)
}

// scrape fetches and parses m's metrics as the chain's scraper.
func (c *chain) scrape(t testing.TB, m *qemu.Machine) promtest.Families {
	t.Helper()
	resp, err := scrapeWith(c.metricsClient(t, []tls.Certificate{c.scraper.cert}), m)
	if err != nil {
		t.Fatal("scrape:", err)
	}
	fams, err := promtest.ParseResponse(resp)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// scrapeRefused checks that a scrape presenting certs (what) fails in the
// TLS handshake with the server's alert want: TLS 1.3 clients learn of
// the refusal from the alert on their first read.
func (c *chain) scrapeRefused(t testing.TB, m *qemu.Machine, what string, certs []tls.Certificate, want string) {
	t.Helper()
	resp, err := scrapeWith(c.metricsClient(t, certs), m)
	if err == nil {
		resp.Body.Close()
		t.Errorf("a scrape %s got %s", what, resp.Status)
		return
	}
	if !strings.Contains(err.Error(), "remote error: tls: "+want) {
		t.Errorf("a scrape %s failed, but not with the TLS alert %q: %v", what, want, err)
		return
	}
	t.Logf("scrape %s: %v", what, err)
}

// sample returns the value of family name's series with exactly labels
// (name, value, ...), failing if there is none.
func sample(t testing.TB, fams promtest.Families, name string, labels ...string) float64 {
	t.Helper()
	v, ok := fams.Sample(name, labels...)
	if !ok {
		t.Fatalf("scrape has no series %s%q", name, labels)
	}
	return v
}

// checkMetrics scrapes m after the test wrote and read back at least
// written bytes of the export, and checks the appliance's view of it:
// serving, the NBD traffic counted, a committed store and a valid lease
// of at most lease. Scrapes without a client certificate or with one
// from another CA are refused.
func (c *chain) checkMetrics(t testing.TB, m *qemu.Machine, written int, lease time.Duration) {
	t.Helper()
	c.scrapeRefused(t, m, "without a client certificate", nil, "certificate required")
	c.scrapeRefused(t, m, "with a client certificate from another CA",
		[]tls.Certificate{newScraper(t).cert}, "unknown certificate authority")
	fams := c.scrape(t, m)
	nbd := func(name, command string) float64 {
		return sample(t, fams, name, "export", "registers", "command", command)
	}
	got := map[string]float64{
		"serving":        sample(t, fams, "embassy_appliance_serving"),
		"write requests": nbd("embassy_nbd_requests_total", "write"),
		"read requests":  nbd("embassy_nbd_requests_total", "read"),
		"write bytes":    nbd("embassy_nbd_bytes_total", "write"),
		"read bytes":     nbd("embassy_nbd_bytes_total", "read"),
		"errors":         nbd("embassy_nbd_errors_total", "write") + nbd("embassy_nbd_errors_total", "read"),
		"epoch":          sample(t, fams, "embassy_store_epoch"),
		"nv counter":     sample(t, fams, "embassy_store_nv_counter"),
		"lease":          sample(t, fams, "embassy_appliance_lease_remaining_seconds", "verifier", "verifier"),
		"quorum lease":   sample(t, fams, "embassy_appliance_quorum_lease_remaining_seconds"),
	}
	t.Logf("metrics: %v", got)
	for _, s := range fams["embassy_nbd_requests_total"].GetMetric() {
		t.Logf("embassy_nbd_requests_total%v %v", s.GetLabel(), s.GetCounter().GetValue())
	}
	checks := []struct {
		what string
		ok   bool
	}{
		{"embassy_appliance_serving is 1", got["serving"] == 1},
		{"write requests counted", got["write requests"] > 0},
		{"read requests counted", got["read requests"] > 0},
		{fmt.Sprintf("at least the %d bytes written counted", written), got["write bytes"] >= float64(written)},
		{fmt.Sprintf("at least the %d bytes read back counted", written), got["read bytes"] >= float64(written)},
		{"no NBD errors", got["errors"] == 0},
		{"a committed store epoch", got["epoch"] > 0},
		{fmt.Sprintf("the verifier's lease remaining, at most %v", lease), got["lease"] > 0 && got["lease"] <= lease.Seconds()},
		{"the quorum's lease remaining", got["quorum lease"] > 0 && got["quorum lease"] <= lease.Seconds()},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("metrics: want %s", ch.what)
		}
	}
}
