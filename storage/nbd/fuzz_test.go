package nbd_test

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage/nbd"
)

// fuzzServer is a plaintext server with one small read-write export.
func fuzzServer(t testing.TB, tlsCfg bool) *nbd.Server {
	t.Helper()
	opts := nbd.ServerOptions{
		Exports: []nbd.Export{
			{Name: "mem", Backend: newMem(1 << 20), MultiConn: true},
			{Name: "ro", Backend: newMem(64 << 10), ReadOnly: true},
		},
		Grants: []nbd.Grant{
			{Identity: nbd.AnyIdentity, Export: "mem", Access: nbd.ReadWrite},
			{Identity: nbd.AnyIdentity, Export: "ro", Access: nbd.ReadOnly},
		},
		Plaintext:        true,
		QueueDepth:       4,
		MaxPayload:       64 << 10,
		HandshakeTimeout: 5 * time.Second,
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if tlsCfg {
		opts.Plaintext = false
		opts.TLSConfig = newPKI(t).serverTLS
	}
	srv, err := nbd.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// feed runs one connection whose client sends input and hangs up. The
// server must neither panic nor hang.
func feed(t *testing.T, srv *nbd.Server, input []byte) {
	cli, sc := net.Pipe()
	done := make(chan struct{})
	go func() {
		srv.ServeConn(context.Background(), sc)
		close(done)
	}()
	go io.Copy(io.Discard, cli)
	cli.SetWriteDeadline(time.Now().Add(5 * time.Second))
	cli.Write(input)
	cli.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server connection did not end after the client hung up")
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, 0x49484156454F5054)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// transmissionPrefix is a valid handshake into export "mem" with
// structured replies and base:allocation.
func transmissionPrefix() []byte {
	b := binary.BigEndian.AppendUint32(nil, 3)
	b = append(b, optBytes(optStructuredReply, nil)...)
	b = append(b, optBytes(optSetMetaContext, metaData("mem", "base:allocation"))...)
	b = append(b, optBytes(optGo, infoData("mem", 3))...)
	return b
}

func FuzzHandshake(f *testing.F) {
	f.Add(transmissionPrefix())
	f.Add(append(binary.BigEndian.AppendUint32(nil, 1), optBytes(optExportName, []byte("mem"))...))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 3), optBytes(optList, nil)...))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 3), optBytes(optStartTLS, nil)...))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 3), optBytes(optListMetaContext, metaData("mem"))...))
	plain := fuzzServer(f, false)
	forced := fuzzServer(f, true)
	f.Fuzz(func(t *testing.T, input []byte) {
		feed(t, plain, input)
		feed(t, forced, input)
	})
}

func FuzzTransmission(f *testing.F) {
	req := func(typ, flags uint16, off uint64, length uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, 0x25609513)
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, 1)
		b = binary.BigEndian.AppendUint64(b, off)
		b = binary.BigEndian.AppendUint32(b, length)
		return append(b, data...)
	}
	f.Add(req(cmdWrite, flagFUA, 4096, 5, []byte("hello")))
	f.Add(append(req(cmdRead, 0, 0, 8192, nil), req(cmdBlockStatus, 0, 0, 1<<20, nil)...))
	f.Add(append(req(cmdTrim, 0, 0, 4096, nil), req(cmdWriteZeroes, 2, 8192, 4096, nil)...))
	f.Add(append(req(cmdCache, 0, 0, 4096, nil), req(cmdFlush, 0, 0, 0, nil)...))
	f.Add(req(cmdWrite, 0, 1<<20-2, 1<<17, make([]byte, 100)))
	f.Add(req(cmdDisc, 0, 0, 0, nil))
	srv := fuzzServer(f, false)
	prefix := transmissionPrefix()
	f.Fuzz(func(t *testing.T, input []byte) {
		feed(t, srv, append(append([]byte(nil), prefix...), input...))
	})
}
