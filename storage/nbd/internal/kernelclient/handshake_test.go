package kernelclient_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/storage/nbd"
	"github.com/dataembassy/embassy/storage/nbd/internal/kernelclient"
)

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *pki.CA, cn string, usage pki.Usage) tls.Certificate {
	t.Helper()
	l, err := ca.Issue(pki.LeafOptions{CommonName: cn, Usage: usage, Hosts: []string{"localhost"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return l.TLSCertificate()
}

// serve runs an nbd.Server with one 1 MiB read-write export "disk" (granted
// to "client") and one export "hidden" granted to nobody, and returns its
// address.
func serve(t *testing.T, c *pki.CA, plaintext bool) string {
	t.Helper()
	file := func() nbd.Backend {
		path := filepath.Join(t.TempDir(), "disk")
		if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := nbd.OpenFile(path, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	identity := "client"
	if plaintext {
		identity = nbd.AnyIdentity
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{
		Exports: []nbd.Export{{Name: "disk", Backend: file()}, {Name: "hidden", Backend: file()}},
		Grants: []nbd.Grant{
			{Identity: identity, Export: "disk", Access: nbd.ReadWrite},
			{Identity: identity, Export: "gone", Access: nbd.ReadWrite},
		},
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{issue(t, c, "server", pki.Server)}, ClientCAs: c.Pool()},
		Plaintext: plaintext,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l.Addr().String()
}

func TestNegotiate(t *testing.T) {
	c := newCA(t)
	rogue := newCA(t)
	addr := serve(t, c, false)
	plainAddr := serve(t, c, true)
	good := &tls.Config{RootCAs: c.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{issue(t, c, "client", pki.Client)}}
	stranger := &tls.Config{RootCAs: c.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{issue(t, c, "stranger", pki.Client)}}
	rogueCert := &tls.Config{RootCAs: c.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{issue(t, rogue, "client", pki.Client)}}
	wrongServer := &tls.Config{RootCAs: rogue.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{issue(t, c, "client", pki.Client)}}

	const (
		errUnsup   = 1<<31 + 1
		errPolicy  = 1<<31 + 2
		errUnknown = 1<<31 + 6
	)
	tests := []struct {
		name    string
		addr    string
		cfg     *tls.Config
		export  string
		wantRep uint32 // expected NBD_REP_ERR_*, 0 for success or a TLS failure
		wantTLS bool   // expect the TLS handshake to fail
	}{
		{name: "granted", addr: addr, cfg: good, export: "disk"},
		{name: "no grant", addr: addr, cfg: good, export: "hidden", wantRep: errPolicy},
		{name: "other identity", addr: addr, cfg: stranger, export: "disk", wantRep: errPolicy},
		{name: "granted but missing", addr: addr, cfg: good, export: "gone", wantRep: errUnknown},
		{name: "client cert from another CA", addr: addr, cfg: rogueCert, export: "disk", wantTLS: true},
		{name: "server not trusted", addr: addr, cfg: wrongServer, export: "disk", wantTLS: true},
		{name: "server without TLS", addr: plainAddr, cfg: good, export: "disk", wantRep: errUnsup},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			e, err := kernelclient.Negotiate(conn, tc.cfg, tc.export)
			var oe *kernelclient.OptionError
			switch {
			case tc.wantRep != 0:
				if !errors.As(err, &oe) || oe.Type != tc.wantRep {
					t.Fatalf("Negotiate: %v, want option error %#x", err, tc.wantRep)
				}
			case tc.wantTLS:
				// A refused client certificate may surface on the first
				// read after the handshake (TLS 1.3) rather than in it.
				if err == nil || errors.As(err, &oe) {
					t.Fatalf("Negotiate: %v, want a TLS failure", err)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if e.Size != 1<<20 || e.Flags&kernelclient.FlagHasFlags == 0 || e.Flags&kernelclient.FlagReadOnly != 0 ||
					e.Flags&kernelclient.FlagSendFlush == 0 || e.Flags&kernelclient.FlagSendTrim == 0 {
					t.Errorf("export size %d flags %#x", e.Size, e.Flags)
				}
				if e.MinBlock == 0 || e.PrefBlock != 4096 || e.MaxBlock < 1<<20 {
					t.Errorf("block sizes %d/%d/%d", e.MinBlock, e.PrefBlock, e.MaxBlock)
				}
				if _, ok := e.Conn.(*tls.Conn); !ok {
					t.Errorf("transmission conn is %T, want *tls.Conn", e.Conn)
				}
			}
		})
	}
}
