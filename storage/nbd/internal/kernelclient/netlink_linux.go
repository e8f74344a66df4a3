//go:build linux

package kernelclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The "nbd" generic netlink family of <linux/nbd-netlink.h>, version 1.
const (
	nbdGenlFamily  = "nbd"
	nbdGenlVersion = 1

	nbdCmdConnect    = 1
	nbdCmdDisconnect = 2

	nbdAttrIndex          = 1 // u32
	nbdAttrSizeBytes      = 2 // u64
	nbdAttrBlockSizeBytes = 3 // u64
	nbdAttrTimeout        = 4 // u64, seconds
	nbdAttrServerFlags    = 5 // u64, the export's transmission flags
	nbdAttrSockets        = 7 // nested: NBD_SOCK_ITEM, each nested: NBD_SOCK_FD

	nbdSockItem = 1
	nbdSockFD   = 1 // u32
)

// genl is a generic netlink socket talking to the nbd family.
type genl struct {
	fd     int
	family uint16
	seq    uint32
}

// openNBDGenl opens a generic netlink socket and resolves the nbd
// family's id (the module must be loaded).
func openNBDGenl() (*genl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("kernelclient: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kernelclient: netlink bind: %w", err)
	}
	g := &genl{fd: fd}
	reply, err := g.request(unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, 1, attrString(unix.CTRL_ATTR_FAMILY_NAME, nbdGenlFamily))
	if err != nil {
		g.close()
		return nil, fmt.Errorf("kernelclient: resolve netlink family %q: %w", nbdGenlFamily, err)
	}
	for a, rest := range attrs(reply) {
		if a == unix.CTRL_ATTR_FAMILY_ID && len(rest) >= 2 {
			g.family = binary.NativeEndian.Uint16(rest)
		}
	}
	if g.family == 0 {
		g.close()
		return nil, fmt.Errorf("kernelclient: netlink family %q has no id in the reply", nbdGenlFamily)
	}
	return g, nil
}

func (g *genl) close() { unix.Close(g.fd) }

// request sends one generic netlink request with an acknowledgement
// requested and returns the attributes of the reply message, if the
// kernel sent one before its acknowledgement (nil if not).
func (g *genl) request(family uint16, cmd, version uint8, payload []byte) ([]byte, error) {
	g.seq++
	msg := make([]byte, unix.NLMSG_HDRLEN+unix.GENL_HDRLEN, unix.NLMSG_HDRLEN+unix.GENL_HDRLEN+len(payload))
	msg = append(msg, payload...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], family)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], g.seq)
	msg[unix.NLMSG_HDRLEN] = cmd
	msg[unix.NLMSG_HDRLEN+1] = version
	if err := unix.Sendto(g.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink send: %w", err)
	}
	var reply []byte
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(g.fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("netlink reply: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != g.seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, errors.New("netlink: short error message")
				}
				if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
					return nil, unix.Errno(errno)
				}
				return reply, nil // the acknowledgement ends the exchange
			case unix.NLMSG_DONE:
				return reply, nil
			default:
				if len(m.Data) >= unix.GENL_HDRLEN {
					reply = append([]byte(nil), m.Data[unix.GENL_HDRLEN:]...)
				}
			}
		}
	}
}

// attr encodes one netlink attribute, padded to 4 bytes.
func attr(typ uint16, data []byte) []byte {
	b := make([]byte, unix.NLA_HDRLEN, unix.NLA_HDRLEN+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(unix.NLA_HDRLEN+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func attrU32(typ uint16, v uint32) []byte {
	return attr(typ, binary.NativeEndian.AppendUint32(nil, v))
}

func attrU64(typ uint16, v uint64) []byte {
	return attr(typ, binary.NativeEndian.AppendUint64(nil, v))
}

func attrString(typ uint16, s string) []byte { return attr(typ, append([]byte(s), 0)) }

func attrNested(typ uint16, children ...[]byte) []byte {
	var data []byte
	for _, c := range children {
		data = append(data, c...)
	}
	return attr(typ|unix.NLA_F_NESTED, data)
}

// attrs iterates over the attributes in b, yielding each one's type
// (flags masked off) and payload; it stops at a malformed one.
func attrs(b []byte) func(yield func(uint16, []byte) bool) {
	return func(yield func(uint16, []byte) bool) {
		for len(b) >= unix.NLA_HDRLEN {
			n := int(binary.NativeEndian.Uint16(b[0:]))
			if n < unix.NLA_HDRLEN || n > len(b) {
				return
			}
			if !yield(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.NLA_HDRLEN:n]) {
				return
			}
			n = (n + 3) &^ 3
			if n > len(b) {
				return
			}
			b = b[n:]
		}
	}
}

// deviceIndex returns N for a device node /dev/nbdN.
func deviceIndex(path string) (uint32, error) {
	s, ok := strings.CutPrefix(path, "/dev/nbd")
	if !ok {
		return 0, fmt.Errorf("kernelclient: %s is not /dev/nbdN", path)
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("kernelclient: %s is not /dev/nbdN", path)
	}
	return uint32(n), nil
}

// netlinkConnect starts device index with NBD_CMD_CONNECT: size, block
// size, the export's flags, a timeout and every socket in one message,
// as nbd-client does by default.
func netlinkConnect(index uint32, size uint64, blockSize int, flags uint16, fds []int) error {
	g, err := openNBDGenl()
	if err != nil {
		return err
	}
	defer g.close()
	var socks [][]byte
	for _, fd := range fds {
		socks = append(socks, attrNested(nbdSockItem, attrU32(nbdSockFD, uint32(fd))))
	}
	var payload []byte
	for _, a := range [][]byte{
		attrU32(nbdAttrIndex, index),
		attrU64(nbdAttrSizeBytes, size),
		attrU64(nbdAttrBlockSizeBytes, uint64(blockSize)),
		attrU64(nbdAttrServerFlags, uint64(flags)),
		attrU64(nbdAttrTimeout, 60),
		attrNested(nbdAttrSockets, socks...),
	} {
		payload = append(payload, a...)
	}
	if _, err := g.request(g.family, nbdCmdConnect, nbdGenlVersion, payload); err != nil {
		return fmt.Errorf("kernelclient: netlink NBD_CMD_CONNECT of /dev/nbd%d: %w", index, err)
	}
	return nil
}

// netlinkDisconnect sends NBD_CMD_DISCONNECT for device index: the kernel
// sends NBD_CMD_DISC on each connection and shuts its sockets down.
func netlinkDisconnect(index uint32) error {
	g, err := openNBDGenl()
	if err != nil {
		return err
	}
	defer g.close()
	if _, err := g.request(g.family, nbdCmdDisconnect, nbdGenlVersion, attrU32(nbdAttrIndex, index)); err != nil {
		return fmt.Errorf("kernelclient: netlink NBD_CMD_DISCONNECT of /dev/nbd%d: %w", index, err)
	}
	return nil
}
