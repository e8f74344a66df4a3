package nbd_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/storage/nbd"
)

// Tests of the handshake: option haggling, TLS rules, export names.

// plainServer serves mem as "mem" (rw for everyone) and "ro" (read-only)
// without TLS.
func plainServer(t testing.TB, mem *memBackend, depth int) *runningServer {
	t.Helper()
	return startServer(t, nbd.ServerOptions{
		Exports: []nbd.Export{
			{Name: "mem", Backend: mem},
			{Name: "ro", Backend: newMem(1 << 20), ReadOnly: true},
			{Name: "hidden", Backend: newMem(4096)},
		},
		Grants: []nbd.Grant{
			{Identity: nbd.AnyIdentity, Export: "mem", Access: nbd.ReadWrite},
			{Identity: nbd.AnyIdentity, Export: "ro", Access: nbd.ReadWrite},
			{Identity: nbd.AnyIdentity, Export: "missing", Access: nbd.ReadOnly},
		},
		Plaintext:  true,
		QueueDepth: depth,
		MaxPayload: 1 << 20,
	})
}

func TestNewServerValidates(t *testing.T) {
	mem := newMem(4096)
	cases := []struct {
		name string
		opts nbd.ServerOptions
	}{
		{"no TLS and not plaintext", nbd.ServerOptions{}},
		{"export without backend", nbd.ServerOptions{Plaintext: true, Exports: []nbd.Export{{Name: "a"}}}},
		{"duplicate export", nbd.ServerOptions{Plaintext: true, Exports: []nbd.Export{{Name: "a", Backend: mem}, {Name: "a", Backend: mem}}}},
		{"grant without access", nbd.ServerOptions{Plaintext: true, Grants: []nbd.Grant{{Identity: "x", Export: "a"}}}},
		{"grant without identity", nbd.ServerOptions{Plaintext: true, Grants: []nbd.Grant{{Export: "a", Access: nbd.ReadOnly}}}},
		{"tiny max payload", nbd.ServerOptions{Plaintext: true, MaxPayload: 512}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := nbd.NewServer(tc.opts); err == nil {
				t.Fatal("NewServer accepted bad options")
			}
		})
	}
}

func TestOptionHaggling(t *testing.T) {
	srv := plainServer(t, newMem(1<<20), 4)
	c := dialRaw(t, srv.addr)

	c.sendOpt(4242, []byte("whatever"))
	c.expectOpt(4242, repErrUnsup)
	c.sendOpt(optList, []byte("x"))
	c.expectOpt(optList, repErrInvalid)
	c.sendOpt(optList, nil)
	var names []string
	for {
		typ, d := c.optReply(optList)
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("LIST reply %#x", typ)
		}
		n := binary.BigEndian.Uint32(d)
		names = append(names, string(d[4:4+n]))
	}
	if strings.Join(names, ",") != "mem,ro" {
		t.Errorf("LIST = %v, want [mem ro] (hidden has no grant, missing does not exist)", names)
	}
	c.sendOpt(optStartTLS, nil)
	c.expectOpt(optStartTLS, repErrUnsup)
	c.sendOpt(optSetMetaContext, metaData("mem", "base:allocation"))
	c.expectOpt(optSetMetaContext, repErrInvalid) // structured replies first
	c.sendOpt(optInfo, infoData("hidden"))
	c.expectOpt(optInfo, repErrPolicy)
	c.sendOpt(optInfo, infoData("nothing-at-all"))
	c.expectOpt(optInfo, repErrPolicy) // ungranted names are not revealed
	c.sendOpt(optInfo, infoData("missing"))
	c.expectOpt(optInfo, repErrUnknown)
	c.sendOpt(optInfo, []byte{0, 0, 0, 9, 'm'})
	c.expectOpt(optInfo, repErrInvalid)
	c.sendOpt(optStructuredReply, nil)
	c.expectOpt(optStructuredReply, repAck)
	c.sendOpt(optListMetaContext, metaData("mem"))
	if d := c.expectOpt(optListMetaContext, repMetaContext); string(d[4:]) != "base:allocation" {
		t.Errorf("LIST_META_CONTEXT gave %q", d[4:])
	}
	c.expectOpt(optListMetaContext, repAck)
	c.sendOpt(optSetMetaContext, metaData("mem", "qemu:dirty-bitmap:x"))
	c.expectOpt(optSetMetaContext, repAck) // nothing selected
	// INFO with name and description requests, then GO.
	c.sendOpt(optInfo, infoData("ro", 1, 2, 3))
	var sawName, sawBlock bool
	for {
		typ, d := c.optReply(optInfo)
		if typ == repAck {
			break
		}
		switch binary.BigEndian.Uint16(d) {
		case 0:
			if binary.BigEndian.Uint16(d[10:])&tflagReadOnly == 0 {
				t.Error("read-only export not flagged read-only")
			}
		case 1:
			sawName = string(d[2:]) == "ro"
		case 3:
			sawBlock = binary.BigEndian.Uint32(d[2:]) == 1 && binary.BigEndian.Uint32(d[6:]) == 4096 && binary.BigEndian.Uint32(d[10:]) == 1<<20
		}
	}
	if !sawName || !sawBlock {
		t.Errorf("INFO: name %v, block size %v", sawName, sawBlock)
	}
	c.goExport("mem")
	if c.size != 1<<20 {
		t.Fatalf("size %d", c.size)
	}
	// No meta context was selected for "mem": block status is refused.
	if r := c.do(cmdBlockStatus, 0, 0, 4096, nil); r.errno != einval {
		t.Errorf("block status without context: errno %d", r.errno)
	}
	if r := c.do(cmdRead, 0, 0, 10, nil); r.errno != 0 || len(r.data) != 10 {
		t.Errorf("read after haggling: %+v", r)
	}
}

func TestExportNameNoZeroes(t *testing.T) {
	srv := plainServer(t, newMem(1<<20), 4)
	c := dialRaw(t, srv.addr)
	c.sendOpt(optExportName, []byte("mem"))
	var b [10]byte
	c.read(b[:])
	if binary.BigEndian.Uint64(b[:]) != 1<<20 {
		t.Fatalf("size %d", binary.BigEndian.Uint64(b[:]))
	}
	// With NO_ZEROES the next bytes are our replies, not 124 zeros.
	if r := c.do(cmdWrite, 0, 0, 3, []byte("abc")); r.errno != 0 {
		t.Fatalf("write errno %d", r.errno)
	}
	// EXPORT_NAME with an unknown export closes the connection.
	c2 := dialRaw(t, srv.addr)
	c2.sendOpt(optExportName, []byte("hidden"))
	c2.expectClosed()
}

func TestBadOptionMagicDisconnects(t *testing.T) {
	srv := plainServer(t, newMem(1<<20), 4)
	c := dialRaw(t, srv.addr)
	c.write(bytes.Repeat([]byte{0xee}, 16))
	c.expectClosed()
	// The server keeps serving others.
	dialExport(t, srv.addr, "mem", false)
}

// aliceServer serves a 1 MiB memory export "d" over TLS, granted to
// "alice" with access.
func aliceServer(t *testing.T, p *testPKI, access nbd.Access) *runningServer {
	t.Helper()
	return startServer(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "d", Backend: newMem(1 << 20)}},
		Grants:    []nbd.Grant{{Identity: "alice", Export: "d", Access: access}},
		TLSConfig: p.serverTLS,
	})
}

func TestTLSOptionRules(t *testing.T) {
	p := newPKI(t)
	srv := aliceServer(t, p, nbd.ReadOnly)
	c := dialRaw(t, srv.addr)
	for _, opt := range []uint32{optList, optInfo, optGo, optStructuredReply, 4242} {
		c.sendOpt(opt, nil)
		c.expectOpt(opt, repErrTLSReqd)
	}
	c.startTLS(p.clientTLS(t, p.ca, "alice"))
	c.sendOpt(optStartTLS, nil)
	c.expectOpt(optStartTLS, repErrInvalid)
	c.goExport("d")
	if c.tflags&tflagReadOnly == 0 {
		t.Error("read-only grant gave a writable export")
	}
	if r := c.do(cmdWrite, 0, 0, 4, []byte("evil")); r.errno != eperm {
		t.Errorf("write with read-only grant: errno %d, want EPERM", r.errno)
	}

	// EXPORT_NAME before TLS cannot be refused politely: disconnect.
	c2 := dialRaw(t, srv.addr)
	c2.sendOpt(optExportName, []byte("d"))
	c2.expectClosed()
	if !strings.Contains(srv.logs.String(), "refused: EXPORT_NAME before TLS") {
		t.Error("refusal not logged")
	}
}
