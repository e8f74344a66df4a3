package nbd_test

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/storage/nbd"
)

// recordingListener hands each accepted connection, unwrapped, to conns.
type recordingListener struct {
	net.Listener
	conns chan net.Conn
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.conns <- c
	}
	return c, err
}

// TestTransmissionSizesSendBuffer checks that a loopback connection
// entering transmission has its send buffer capped (docs/nbd-protocol.md,
// "Send buffer"): autotuning would let it grow to megabytes.
func TestTransmissionSizesSendBuffer(t *testing.T) {
	sysctl := func(name string) int {
		n := nbd.SysctlInt(name, -1)
		if n < 0 {
			t.Fatalf("cannot read /proc/sys/%s", name)
		}
		return n
	}
	want := 1 << 20
	if sysctl("net/ipv4/tcp_wmem") <= want {
		want = 0 // the kernel's own limit is already lower: left alone
	}
	if os.Geteuid() != 0 && sysctl("net/core/wmem_max") < want/2 {
		want = 0 // SO_SNDBUF would be clamped and SO_SNDBUFFORCE is refused
	}

	disk, _ := tempFile(t, 1<<20)
	conns := make(chan net.Conn, 1)
	srv := startServerWrapped(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "disk", Backend: disk}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "disk", Access: nbd.ReadWrite}},
		Plaintext: true,
	}, func(l net.Listener) net.Listener { return &recordingListener{Listener: l, conns: conns} })
	c := dialExport(t, srv.addr, "disk", true)
	if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read: errno %d", r.errno)
	}
	served := <-conns

	if !strings.Contains(srv.logs.String(), "send_buffer="+strconv.Itoa(want)) {
		t.Errorf("log does not say send_buffer=%d:\n%s", want, srv.logs.String())
	}
	// Unset, the socket reports the system-wide default.
	if got, def := nbd.UnsentLimit(t, served), sysctl("net/ipv4/tcp_notsent_lowat"); uint32(got) != uint32(def) {
		t.Errorf("plaintext connection's TCP_NOTSENT_LOWAT = %d, want the default %d", uint32(got), def)
	}
	if want == 0 {
		return
	}
	got := nbd.SendBuffer(t, served)
	if got != want {
		t.Errorf("served socket's SO_SNDBUF = %d, want %d", got, want)
	}
}

// TestTLSTransmissionLimitsUnsent checks that a TLS connection entering
// transmission keeps little unsent data queued (TCP_NOTSENT_LOWAT, 64 KiB;
// docs/nbd-protocol.md, "Send buffer").
func TestTLSTransmissionLimitsUnsent(t *testing.T) {
	p := newPKI(t)
	conns := make(chan net.Conn, 1)
	srv := startServerWrapped(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "d", Backend: newMem(1 << 20)}},
		Grants:    []nbd.Grant{{Identity: "alice", Export: "d", Access: nbd.ReadWrite}},
		TLSConfig: p.serverTLS,
	}, func(l net.Listener) net.Listener { return &recordingListener{Listener: l, conns: conns} })
	c := dialRaw(t, srv.addr)
	c.startTLS(p.clientTLS(t, p.ca, "alice"))
	c.goExport("d")
	if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read: errno %d", r.errno)
	}
	served := <-conns
	const want = 64 << 10
	if got := nbd.UnsentLimit(t, served); got != want {
		t.Errorf("TLS connection's TCP_NOTSENT_LOWAT = %d, want %d", got, want)
	}
	if !strings.Contains(srv.logs.String(), "unsent_limit="+strconv.Itoa(want)) {
		t.Errorf("log does not say unsent_limit=%d:\n%s", want, srv.logs.String())
	}
}
