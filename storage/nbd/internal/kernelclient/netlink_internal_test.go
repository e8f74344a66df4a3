//go:build linux

package kernelclient

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// TestNetlinkAttrs checks the attribute encoding NBD_CMD_CONNECT is built
// from (lengths, 4-byte padding, the nested flag) by walking it back.
func TestNetlinkAttrs(t *testing.T) {
	const strAttr = 10 // any type the others do not use
	msg := append(attrString(strAttr, "nbd"), attrNested(nbdAttrSockets,
		attrNested(nbdSockItem, attrU32(nbdSockFD, 7)),
		attrNested(nbdSockItem, attrU32(nbdSockFD, 9)))...)
	msg = append(msg, attrU64(nbdAttrSizeBytes, 1<<33)...)
	if len(msg)%4 != 0 {
		t.Fatalf("message of %d bytes is not 4-byte aligned", len(msg))
	}
	var types []uint16
	var fds []uint32
	for typ, data := range attrs(msg) {
		types = append(types, typ)
		switch typ {
		case strAttr:
			if !bytes.Equal(data, []byte("nbd\x00")) {
				t.Errorf("string attribute %q", data)
			}
		case nbdAttrSockets:
			if binary.NativeEndian.Uint16(msg[len(attrString(strAttr, "nbd"))+2:])&0x8000 == 0 {
				t.Error("sockets attribute lacks NLA_F_NESTED")
			}
			for it, item := range attrs(data) {
				if it != nbdSockItem {
					t.Errorf("socket list holds attribute %d", it)
				}
				for ft, fd := range attrs(item) {
					if ft != nbdSockFD || len(fd) != 4 {
						t.Errorf("socket item holds attribute %d of %d bytes", ft, len(fd))
						continue
					}
					fds = append(fds, binary.NativeEndian.Uint32(fd))
				}
			}
		case nbdAttrSizeBytes:
			if len(data) != 8 || binary.NativeEndian.Uint64(data) != 1<<33 {
				t.Errorf("size attribute %x", data)
			}
		}
	}
	if len(types) != 3 || types[0] != strAttr || types[1] != nbdAttrSockets || types[2] != nbdAttrSizeBytes {
		t.Errorf("attribute types %v, want [%d %d %d]", types, strAttr, nbdAttrSockets, nbdAttrSizeBytes)
	}
	if len(fds) != 2 || fds[0] != 7 || fds[1] != 9 {
		t.Errorf("socket fds %v, want [7 9]", fds)
	}
	// A truncated attribute ends the walk instead of reading past it.
	for range attrs(msg[:len(msg)-3]) {
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
