// Package kernelclient drives the Linux kernel's NBD client against an NBD
// server the way nbd-client does for TLS: it performs the fixed-newstyle
// handshake itself (NBD_OPT_STARTTLS, then NBD_OPT_GO) over a TLS
// connection, hands one end of a socketpair per connection to the kernel
// with the NBD ioctls (Attach; several connections for exports with
// CAN_MULTI_CONN), and proxies bytes between the other end and the TLS
// connection. The kernel then speaks the transmission phase with simple
// replies.
//
// It also defines the workload the guest runs on the resulting /dev/nbdN
// (Plan, Pattern, Expected; Run executes it, CheckReadOnly checks a
// read-only export) so that the host-side test can check the export
// independently. It is test infrastructure for storage/nbd: the guest init
// in ./guestinit uses it, and storage/nbd's kernel client test boots that
// init under QEMU. docs/nbd-protocol.md ("Linux kernel client") explains
// the set-up.
package kernelclient

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Wire constants from the NBD protocol specification (doc/proto.md of the
// NetworkBlockDevice/nbd project), written independently of storage/nbd so
// that this client checks the server rather than sharing its mistakes.
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic = 0x0003e889045565a9

	hflagFixedNewstyle = 1 << 0
	hflagNoZeroes      = 1 << 1

	optStartTLS = 5
	optGo       = 7

	repAck   = 1
	repInfo  = 3
	repError = 1 << 31

	infoExport    = 0
	infoBlockSize = 3

	// maxReplyData bounds one option reply's payload: a server sending
	// more is broken or hostile.
	maxReplyData = 64 << 10
)

// Transmission flags (NBD_FLAG_*) the kernel client acts on.
const (
	FlagHasFlags     = 1 << 0
	FlagReadOnly     = 1 << 1
	FlagSendFlush    = 1 << 2
	FlagSendFUA      = 1 << 3
	FlagSendTrim     = 1 << 5
	FlagCanMultiConn = 1 << 8
)

// ErrProtocol reports a server reply that breaks the handshake rules.
var ErrProtocol = errors.New("kernelclient: protocol violation")

// OptionError is an error reply (NBD_REP_ERR_*) to an option.
type OptionError struct {
	// Option is the option refused (NBD_OPT_*).
	Option uint32
	// Type is the reply type, with the error bit set.
	Type uint32
	// Message is the server's optional human-readable explanation.
	Message string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("kernelclient: option %d refused: reply %#x: %q", e.Option, e.Type, e.Message)
}

// Export is a negotiated export, ready for the transmission phase.
type Export struct {
	// Conn carries the transmission phase (the TLS connection).
	Conn net.Conn
	// Size is the export size in bytes (NBD_INFO_EXPORT).
	Size uint64
	// Flags are the transmission flags (NBD_INFO_EXPORT).
	Flags uint16
	// MinBlock, PrefBlock and MaxBlock are the block size constraints
	// (NBD_INFO_BLOCK_SIZE); zero if the server sent none.
	MinBlock, PrefBlock, MaxBlock uint32
}

// Negotiate runs the client side of the fixed-newstyle handshake on conn:
// STARTTLS with cfg (the server must offer fixed newstyle), then
// NBD_OPT_GO for the export name, asking for the block size constraints.
// On success the returned Export's Conn is the TLS connection, positioned
// at the start of the transmission phase. The caller sets deadlines on conn
// and closes it on error.
func Negotiate(conn net.Conn, cfg *tls.Config, name string) (*Export, error) {
	return negotiate(conn, func(c net.Conn) (net.Conn, error) {
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("kernelclient: TLS handshake: %w", err)
		}
		return tc, nil
	}, name)
}

// negotiate is Negotiate with the TLS upgrade as a function, so that the
// fuzz test can reach the GO replies without a TLS peer.
func negotiate(conn net.Conn, upgrade func(net.Conn) (net.Conn, error), name string) (*Export, error) {
	var hello [18]byte
	if _, err := io.ReadFull(conn, hello[:]); err != nil {
		return nil, fmt.Errorf("kernelclient: reading greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != optMagic {
		return nil, fmt.Errorf("%w: not a newstyle NBD greeting: %x", ErrProtocol, hello[:16])
	}
	hflags := binary.BigEndian.Uint16(hello[16:])
	if hflags&hflagFixedNewstyle == 0 {
		return nil, fmt.Errorf("%w: server does not offer fixed newstyle (flags %#x)", ErrProtocol, hflags)
	}
	// NO_ZEROES only matters for EXPORT_NAME, which we do not use; echo it
	// when offered, as nbd-client does.
	cflags := uint32(hflagFixedNewstyle) | uint32(hflags&hflagNoZeroes)
	if err := binary.Write(conn, binary.BigEndian, cflags); err != nil {
		return nil, fmt.Errorf("kernelclient: sending client flags: %w", err)
	}

	if err := sendOption(conn, optStartTLS, nil); err != nil {
		return nil, err
	}
	typ, data, err := readReply(conn, optStartTLS)
	if err != nil {
		return nil, err
	}
	if typ != repAck || len(data) != 0 {
		return nil, fmt.Errorf("%w: STARTTLS answered with reply %#x (%d bytes)", ErrProtocol, typ, len(data))
	}
	tc, err := upgrade(conn)
	if err != nil {
		return nil, err
	}

	// NBD_OPT_GO: name length, name, one information request (block size).
	req := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	req = append(req, name...)
	req = binary.BigEndian.AppendUint16(req, 1)
	req = binary.BigEndian.AppendUint16(req, infoBlockSize)
	if err := sendOption(tc, optGo, req); err != nil {
		return nil, err
	}
	e := &Export{Conn: tc}
	haveExport := false
	for {
		typ, data, err := readReply(tc, optGo)
		if err != nil {
			return nil, err
		}
		switch typ {
		case repAck:
			if !haveExport {
				return nil, fmt.Errorf("%w: GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return e, nil
		case repInfo:
			if len(data) < 2 {
				return nil, fmt.Errorf("%w: NBD_REP_INFO of %d bytes", ErrProtocol, len(data))
			}
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return nil, fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrProtocol, len(data))
				}
				e.Size = binary.BigEndian.Uint64(data[2:])
				e.Flags = binary.BigEndian.Uint16(data[10:])
				haveExport = true
			case infoBlockSize:
				if len(data) != 14 {
					return nil, fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes", ErrProtocol, len(data))
				}
				e.MinBlock = binary.BigEndian.Uint32(data[2:])
				e.PrefBlock = binary.BigEndian.Uint32(data[6:])
				e.MaxBlock = binary.BigEndian.Uint32(data[10:])
			}
			// Other information types are allowed and ignored.
		default:
			return nil, fmt.Errorf("%w: unexpected reply %#x to GO", ErrProtocol, typ)
		}
	}
}

func sendOption(w io.Writer, opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16+len(data)), optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("kernelclient: sending option %d: %w", opt, err)
	}
	return nil
}

// readReply reads one option reply to opt. Error replies become an
// *OptionError.
func readReply(r io.Reader, opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("kernelclient: reading reply to option %d: %w", opt, err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != optReplyMagic {
		return 0, nil, fmt.Errorf("%w: bad option reply magic %#x", ErrProtocol, m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, fmt.Errorf("%w: reply for option %d, want %d", ErrProtocol, o, opt)
	}
	typ := binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxReplyData {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, fmt.Errorf("kernelclient: reading reply to option %d: %w", opt, err)
	}
	if typ&repError != 0 {
		return 0, nil, &OptionError{Option: opt, Type: typ, Message: string(data)}
	}
	return typ, data, nil
}
