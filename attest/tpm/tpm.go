// Package tpm opens Embassy's TPM and provides the small TPM operations the
// rest of attest needs beyond go-tpm-tools: PCR extension and a monotonic NV
// counter.
//
// Open accepts a character device (the kernel's resource manager
// /dev/tpmrm0, or /dev/tpm0) or the path of a swtpm unix socket started with
// `--server type=unixio,path=...`. Every returned io.ReadWriteCloser returns a
// whole TPM response per Read, as go-tpm's legacy tpm2 package (and so
// go-tpm-tools) requires.
package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
)

// DefaultDevice is the kernel's TPM resource manager, the device the
// appliance uses.
const DefaultDevice = "/dev/tpmrm0"

// maxResponse bounds a TPM response; TPM2 responses are far smaller.
const maxResponse = 1 << 16

// ErrResponse reports a malformed response from the TPM transport.
var ErrResponse = errors.New("tpm: malformed response")

// Open opens the TPM at path: a character device or a swtpm unix socket.
func Open(path string) (io.ReadWriteCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	switch {
	case fi.Mode()&os.ModeSocket != 0:
		return DialSocket(path)
	case fi.Mode()&os.ModeCharDevice != 0:
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("tpm: %w", err)
		}
		return f, nil
	}
	return nil, fmt.Errorf("tpm: %s is neither a character device nor a unix socket", path)
}

// DialSocket connects to a swtpm server socket (`swtpm socket --server
// type=unixio,path=...`). The connection serialises commands: one command
// and its response at a time, whole responses per Read.
func DialSocket(path string) (io.ReadWriteCloser, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("tpm: dial %s: %w", path, err)
	}
	return &framedConn{c: c}, nil
}

// framedConn adapts a stream connection to the one-response-per-Read
// contract of go-tpm's legacy API: it reads the response header, then the
// size it announces, and hands the whole response to a single Read.
type framedConn struct {
	mu      sync.Mutex
	c       net.Conn
	pending []byte
}

func (f *framedConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = nil
	return f.c.Write(p)
}

func (f *framedConn) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending == nil {
		var hdr [10]byte
		if _, err := io.ReadFull(f.c, hdr[:]); err != nil {
			return 0, fmt.Errorf("tpm: read response header: %w", err)
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < 10 || size > maxResponse {
			return 0, fmt.Errorf("%w: size %d", ErrResponse, size)
		}
		buf := make([]byte, size)
		copy(buf, hdr[:])
		if _, err := io.ReadFull(f.c, buf[10:]); err != nil {
			return 0, fmt.Errorf("tpm: read response body: %w", err)
		}
		f.pending = buf
	}
	if len(p) < len(f.pending) {
		return 0, fmt.Errorf("tpm: read buffer of %d bytes for a %d-byte response", len(p), len(f.pending))
	}
	n := copy(p, f.pending)
	f.pending = nil
	return n, nil
}

func (f *framedConn) Close() error { return f.c.Close() }
