package nbd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage/nbd"
)

// Tests of how connections and the server end.

func TestDisconnectDrainsAndFlushes(t *testing.T) {
	mem := newMem(1 << 20)
	mem.delay[0] = 200 * time.Millisecond
	srv := plainServer(t, mem, 4)
	c := dialExport(t, srv.addr, "mem", false)
	c.send(cmdWrite, 0, 1, 0, 4, []byte("slow"))
	c.send(cmdDisc, 0, 2, 0, 0, nil)
	if r := c.recv(); r.cookie != 1 || r.errno != 0 {
		t.Fatalf("in-flight write before DISC: %+v", r)
	}
	c.expectClosed()
	if string(mem.data[:4]) != "slow" || mem.flushes.Load() == 0 {
		t.Errorf("data %q, flushes %d: DISC must drain and flush", mem.data[:4], mem.flushes.Load())
	}
}

// TestDisconnectEndsTLSSession checks that the server closes the TLS
// session (close_notify) before the TCP connection: the spec's MUST after
// NBD_CMD_DISC, and what a client checks to tell an orderly end from a
// truncated stream.
func TestDisconnectEndsTLSSession(t *testing.T) {
	p := newPKI(t)
	srv := aliceServer(t, p, nbd.ReadWrite)
	for _, tc := range []struct {
		name string
		end  func(c *client)
	}{
		{"NBD_CMD_DISC", func(c *client) {
			c.goExport("d")
			c.send(cmdDisc, 0, 1, 0, 0, nil)
		}},
		{"NBD_OPT_ABORT", func(c *client) {
			c.sendOpt(optAbort, nil)
			c.expectOpt(optAbort, repAck)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, srv.addr)
			rec := &inboundRecorder{Conn: c.nc}
			c.nc = rec
			cfg := p.clientTLS(t, p.ca, "alice")
			cfg.MaxVersion = tls.VersionTLS12 // TLS 1.3 hides record types
			c.startTLS(cfg)
			tc.end(c)
			c.expectClosed()
			types := tlsRecordTypes(t, rec.in)
			if len(types) == 0 || types[len(types)-1] != recordAlert {
				t.Fatalf("TLS record types from the server %v: want the last to be an alert (close_notify)", types)
			}
		})
	}
}

// inboundRecorder keeps a copy of what is read through it.
type inboundRecorder struct {
	net.Conn
	in []byte
}

func (r *inboundRecorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.in = append(r.in, p[:n]...)
	return n, err
}

// recordAlert is the TLS record content type of alerts.
const recordAlert = 21

// tlsRecordTypes splits a TLS byte stream into records and returns their
// content types.
func tlsRecordTypes(t *testing.T, b []byte) []byte {
	t.Helper()
	var types []byte
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("truncated TLS record header (%d bytes left)", len(b))
		}
		end := 5 + int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < end {
			t.Fatalf("truncated TLS record (%d of %d bytes)", len(b), end)
		}
		types = append(types, b[0])
		b = b[end:]
	}
	return types
}

func TestGracefulShutdown(t *testing.T) {
	mem := newMem(1 << 20)
	for i := int64(0); i < 8; i++ {
		mem.delay[i*4096] = 200 * time.Millisecond
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "mem", Backend: mem}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "mem", Access: nbd.ReadWrite}},
		Plaintext: true,
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
	c := dialExport(t, l.Addr().String(), "mem", false)
	for i := uint64(0); i < 8; i++ {
		c.send(cmdWrite, 0, i, i*4096, 4096, bytes.Repeat([]byte{0xcc}, 4096))
	}
	// Wait until the writes are in the backend, then shut down.
	deadline := time.Now().Add(10 * time.Second)
	for mem.writes.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	got := c.recvAll(8)
	for i := uint64(0); i < 8; i++ {
		if got[i].errno != 0 {
			t.Errorf("write %d errno %d", i, got[i].errno)
		}
	}
	c.expectClosed()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if mem.flushes.Load() == 0 {
		t.Error("no flush at shutdown")
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Error("listener still accepting after shutdown")
	}
}
