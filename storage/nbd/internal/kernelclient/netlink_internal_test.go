//go:build linux

package kernelclient

import (
	"encoding/binary"
	"testing"

	"github.com/vishvananda/netlink/nl"
)

// TestConnectAttrs checks the NBD_CMD_CONNECT attributes as the kernel
// parses them: types, widths and values, and the socket list nested with
// NLA_F_NESTED.
func TestConnectAttrs(t *testing.T) {
	var msg []byte
	for _, a := range connectAttrs(3, 1<<33, 512, 0xd6d, []int{7, 9}) {
		msg = append(msg, a.Serialize()...)
	}
	if len(msg)%4 != 0 {
		t.Fatalf("message of %d bytes is not 4-byte aligned", len(msg))
	}
	attrs, err := nl.ParseRouteAttr(msg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint16]uint64{nbdAttrIndex: 3, nbdAttrSizeBytes: 1 << 33, nbdAttrBlockSizeBytes: 512, nbdAttrServerFlags: 0xd6d, nbdAttrTimeout: 60}
	var fds []uint32
	for _, a := range attrs {
		typ := a.Attr.Type &^ nl.NLA_F_NESTED
		if typ == nbdAttrSockets {
			if a.Attr.Type&nl.NLA_F_NESTED == 0 {
				t.Error("sockets attribute lacks NLA_F_NESTED")
			}
			items, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range items {
				if it.Attr.Type != nbdSockItem|nl.NLA_F_NESTED {
					t.Errorf("socket list holds attribute %#x", it.Attr.Type)
				}
				fd, err := nl.ParseRouteAttr(it.Value)
				if err != nil || len(fd) != 1 || fd[0].Attr.Type != nbdSockFD || len(fd[0].Value) != 4 {
					t.Errorf("socket item %x: %v", it.Value, err)
					continue
				}
				fds = append(fds, binary.NativeEndian.Uint32(fd[0].Value))
			}
			continue
		}
		w, ok := want[typ]
		if !ok {
			t.Errorf("unexpected attribute %d", typ)
			continue
		}
		var got uint64
		switch len(a.Value) {
		case 4:
			got = uint64(binary.NativeEndian.Uint32(a.Value))
		case 8:
			got = binary.NativeEndian.Uint64(a.Value)
		}
		if wantLen := map[bool]int{true: 4, false: 8}[typ == nbdAttrIndex]; len(a.Value) != wantLen || got != w {
			t.Errorf("attribute %d = %x, want %d in %d bytes", typ, a.Value, w, wantLen)
		}
		delete(want, typ)
	}
	if len(want) != 0 {
		t.Errorf("attributes missing: %v", want)
	}
	if len(fds) != 2 || fds[0] != 7 || fds[1] != 9 {
		t.Errorf("socket fds %v, want [7 9]", fds)
	}
}

func TestDeviceIndex(t *testing.T) {
	for path, want := range map[string]uint32{"/dev/nbd0": 0, "/dev/nbd15": 15} {
		if got, err := deviceIndex(path); err != nil || got != want {
			t.Errorf("deviceIndex(%q) = %d, %v; want %d", path, got, err, want)
		}
	}
	for _, path := range []string{"/dev/sda", "/dev/nbd", "/dev/nbd1p1"} {
		if _, err := deviceIndex(path); err == nil {
			t.Errorf("deviceIndex(%q) accepted", path)
		}
	}
}
