package metrics_test

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/appliance/metrics"
	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/internal/promutil/promtest"
)

// newCA returns a CA for scrapers' client certificates.
func newCA(t *testing.T, name string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// newMetrics returns Metrics listening on 127.0.0.1 (once serving) for
// clients of ca, on the clock *now, closed when the test ends.
func newMetrics(t *testing.T, ca *pki.CA, now *time.Time) *metrics.Metrics {
	t.Helper()
	m, err := metrics.New(metrics.Options{
		Config: &appliance.MetricsConfig{Listen: "127.0.0.1:0", ClientCAPEM: string(ca.CertPEM())},
		Now:    func() time.Time { return *now },
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// parse reads a scrape's body with the Prometheus text parser.
func parse(t *testing.T, res *http.Response) promtest.Families {
	t.Helper()
	fams, err := promtest.ParseResponse(res)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// nbdClient is the least NBD client: plaintext fixed newstyle,
// NBD_OPT_EXPORT_NAME, simple replies.
type nbdClient struct {
	t      *testing.T
	c      net.Conn
	cookie uint64
}

func dialNBD(t *testing.T, addr, export string) *nbdClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	n := &nbdClient{t: t, c: c}
	hello := make([]byte, 18) // NBDMAGIC, IHAVEOPT, handshake flags
	n.read(hello)
	if string(hello[:8]) != "NBDMAGIC" {
		t.Fatalf("greeting %q", hello)
	}
	opt := binary.BigEndian.AppendUint32(nil, 1|2) // FIXED_NEWSTYLE, NO_ZEROES
	opt = append(opt, "IHAVEOPT"...)
	opt = binary.BigEndian.AppendUint32(opt, 1) // NBD_OPT_EXPORT_NAME
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(export)))
	opt = append(opt, export...)
	n.write(opt)
	n.read(make([]byte, 10)) // export size, transmission flags
	return n
}

func (n *nbdClient) read(p []byte) {
	n.t.Helper()
	if _, err := io.ReadFull(n.c, p); err != nil {
		n.t.Fatal(err)
	}
}

func (n *nbdClient) write(p []byte) {
	n.t.Helper()
	if _, err := n.c.Write(p); err != nil {
		n.t.Fatal(err)
	}
}

// do sends one request and returns its reply's error number (and the data
// of a successful read).
func (n *nbdClient) do(typ uint16, off uint64, length uint32, data []byte) (uint32, []byte) {
	n.t.Helper()
	n.cookie++
	req := binary.BigEndian.AppendUint32(nil, 0x25609513)
	req = binary.BigEndian.AppendUint16(req, 0)
	req = binary.BigEndian.AppendUint16(req, typ)
	req = binary.BigEndian.AppendUint64(req, n.cookie)
	req = binary.BigEndian.AppendUint64(req, off)
	req = binary.BigEndian.AppendUint32(req, length)
	n.write(append(req, data...))
	rep := make([]byte, 16)
	n.read(rep)
	if binary.BigEndian.Uint32(rep) != 0x67446698 || binary.BigEndian.Uint64(rep[8:]) != n.cookie {
		n.t.Fatalf("reply header %x", rep)
	}
	errno := binary.BigEndian.Uint32(rep[4:])
	if typ != 0 || errno != 0 {
		return errno, nil
	}
	buf := make([]byte, length)
	n.read(buf)
	return 0, buf
}
