package kernelclient

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// serverScript builds server bytes for negotiate: greeting, STARTTLS ACK,
// then the given GO replies.
func serverScript(replies ...[]byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, nbdMagic)
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint16(b, hflagFixedNewstyle|hflagNoZeroes)
	b = append(b, reply(optStartTLS, repAck, nil)...)
	for _, r := range replies {
		b = append(b, r...)
	}
	return b
}

func reply(opt, typ uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, optReplyMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func infoExportData(size uint64, flags uint16) []byte {
	d := binary.BigEndian.AppendUint16(nil, infoExport)
	d = binary.BigEndian.AppendUint64(d, size)
	return binary.BigEndian.AppendUint16(d, flags)
}

func infoBlockData(lo, pref, hi uint32) []byte {
	d := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	d = binary.BigEndian.AppendUint32(d, lo)
	d = binary.BigEndian.AppendUint32(d, pref)
	return binary.BigEndian.AppendUint32(d, hi)
}

// runScript feeds server bytes to negotiate over a pipe, with the TLS
// upgrade replaced by the identity.
func runScript(t testing.TB, server []byte) (*Export, error) {
	c, s := net.Pipe()
	defer c.Close()
	go func() {
		go io.Copy(io.Discard, s) // the client's options
		s.Write(server)
		s.Close()
	}()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return negotiate(c, func(c net.Conn) (net.Conn, error) { return c, nil }, "disk")
}

func TestNegotiateScripts(t *testing.T) {
	good := serverScript(
		reply(optGo, repInfo, infoExportData(1<<20, FlagHasFlags|FlagSendFlush)),
		reply(optGo, repInfo, infoBlockData(1, 4096, 1<<25)),
		reply(optGo, repInfo, []byte{0, 9, 1, 2}), // unknown info type: ignored
		reply(optGo, repAck, nil),
	)
	e, err := runScript(t, good)
	if err != nil {
		t.Fatal(err)
	}
	if e.Size != 1<<20 || e.Flags != FlagHasFlags|FlagSendFlush || e.PrefBlock != 4096 || e.MaxBlock != 1<<25 {
		t.Fatalf("export %+v", e)
	}

	tests := []struct {
		name   string
		server []byte
		want   error
	}{
		{"bad magic", append([]byte("NBDMAGIX"), good[8:]...), ErrProtocol},
		{"not fixed newstyle", func() []byte { b := append([]byte(nil), good...); b[17] = 0; return b }(), ErrProtocol},
		{"ack without export info", serverScript(reply(optGo, repAck, nil)), ErrProtocol},
		{"short export info", serverScript(reply(optGo, repInfo, []byte{0, 0, 1})), ErrProtocol},
		{"reply for another option", serverScript(reply(optStartTLS, repAck, nil)), ErrProtocol},
		{"huge reply", serverScript(binary.BigEndian.AppendUint32(reply(optGo, repInfo, nil)[:16], 1<<30)), ErrProtocol},
		{"truncated", good[:len(good)-5], io.ErrUnexpectedEOF},
		{"refused", serverScript(reply(optGo, 1<<31+2, []byte("no grant"))), &OptionError{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runScript(t, tc.server)
			var oe *OptionError
			if _, isOE := tc.want.(*OptionError); isOE {
				if !errors.As(err, &oe) || oe.Message != "no grant" {
					t.Fatalf("got %v, want an OptionError with the message", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzNegotiate feeds arbitrary server bytes to the client handshake: it
// must return an export or an error, never panic or hang.
func FuzzNegotiate(f *testing.F) {
	f.Add(serverScript(reply(optGo, repInfo, infoExportData(1<<20, 1)), reply(optGo, repAck, nil)))
	f.Add(serverScript(reply(optGo, 1<<31+2, []byte("policy"))))
	f.Fuzz(func(t *testing.T, server []byte) {
		e, err := runScript(t, server)
		if err == nil && e == nil {
			t.Fatal("no export and no error")
		}
	})
}
