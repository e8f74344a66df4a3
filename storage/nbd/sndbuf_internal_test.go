package nbd

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSendBufferFor(t *testing.T) {
	const autotuneMax = 4 << 20
	tests := []struct {
		name        string
		minRTT      time.Duration
		autotuneMax int
		want        int
	}{
		{"not measured", 0, autotuneMax, 0},
		{"loopback", 2 * time.Microsecond, autotuneMax, minSendBuffer},
		{"same rack, below the floor", 30 * time.Microsecond, autotuneMax, minSendBuffer},
		{"LAN", 100 * time.Microsecond, autotuneMax, 2_500_000},
		{"LAN beyond autotuning", 200 * time.Microsecond, autotuneMax, 0},
		{"WAN", 40 * time.Millisecond, autotuneMax, 0},
		{"autotuning below the floor", 2 * time.Microsecond, 512 << 10, 0},
		{"raised autotuning", 1 * time.Millisecond, 64 << 20, 25_000_000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sendBufferFor(tc.minRTT, tc.autotuneMax); got != tc.want {
				t.Errorf("sendBufferFor(%v, %d) = %d, want %d", tc.minRTT, tc.autotuneMax, got, tc.want)
			}
		})
	}
}

func TestSizeSendBufferLoopback(t *testing.T) {
	_, b := tcpPair(t)
	before := SendBuffer(t, b)
	minRTT, set, err := sizeSendBuffer(b)
	if err != nil {
		t.Fatal(err)
	}
	// The TCP handshake alone gives the kernel a round-trip sample, and on
	// loopback it is microseconds.
	if minRTT <= 0 || minRTT > 10*time.Millisecond {
		t.Fatalf("min RTT over loopback = %v", minRTT)
	}
	if want := sendBufferFor(minRTT, tcpWmemMax()); set != want && set != 0 {
		t.Fatalf("set %d, want sendBufferFor(%v, %d) = %d", set, minRTT, tcpWmemMax(), want)
	}
	mayForce := os.Geteuid() == 0 || wmemMax() >= minSendBuffer/2
	if tcpWmemMax() > minSendBuffer && minRTT < 40*time.Microsecond && mayForce && set != minSendBuffer {
		t.Fatalf("loopback (min RTT %v) got send buffer %d, want %d", minRTT, set, minSendBuffer)
	}
	got := SendBuffer(t, b)
	switch {
	case set != 0 && got != set:
		t.Errorf("SO_SNDBUF = %d after setting %d", got, set)
	case set == 0 && got != before:
		t.Errorf("SO_SNDBUF changed from %d to %d though nothing was set", before, got)
	}
}

func TestSocketTuningNotTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if rtt, set, err := sizeSendBuffer(a); rtt != 0 || set != 0 || err != nil {
		t.Errorf("net.Pipe: %v, %d, %v; want 0, 0, nil", rtt, set, err)
	}
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if rtt, set, err := sizeSendBuffer(c); rtt != 0 || set != 0 || err != nil {
		t.Errorf("unix socket: %v, %d, %v; want 0, 0, nil", rtt, set, err)
	}
	for name, nc := range map[string]net.Conn{"net.Pipe": a, "unix socket": c} {
		if set, err := limitUnsent(nc); set != 0 || err != nil {
			t.Errorf("limitUnsent on %s: %d, %v; want 0, nil", name, set, err)
		}
	}
}
