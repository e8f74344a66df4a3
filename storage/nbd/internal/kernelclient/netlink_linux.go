//go:build linux

package kernelclient

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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

// nbdRequest sends one command of the nbd generic netlink family (the
// module must be loaded) and waits for the kernel's acknowledgement.
func nbdRequest(cmd uint8, attrs ...*nl.RtAttr) error {
	fam, err := netlink.GenlFamilyGet(nbdGenlFamily)
	if err != nil {
		return fmt.Errorf("resolve netlink family %q: %w", nbdGenlFamily, err)
	}
	req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: nbdGenlVersion})
	for _, a := range attrs {
		req.AddData(a)
	}
	_, err = req.Execute(unix.NETLINK_GENERIC, 0)
	return err
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

// connectAttrs are NBD_CMD_CONNECT's attributes: the device, size, block
// size, the export's flags, a timeout and every socket.
func connectAttrs(index uint32, size uint64, blockSize int, flags uint16, fds []int) []*nl.RtAttr {
	socks := nl.NewRtAttr(nbdAttrSockets|int(nl.NLA_F_NESTED), nil)
	for _, fd := range fds {
		socks.AddRtAttr(nbdSockItem|int(nl.NLA_F_NESTED), nil).AddRtAttr(nbdSockFD, nl.Uint32Attr(uint32(fd)))
	}
	return []*nl.RtAttr{
		nl.NewRtAttr(nbdAttrIndex, nl.Uint32Attr(index)),
		nl.NewRtAttr(nbdAttrSizeBytes, nl.Uint64Attr(size)),
		nl.NewRtAttr(nbdAttrBlockSizeBytes, nl.Uint64Attr(uint64(blockSize))),
		nl.NewRtAttr(nbdAttrServerFlags, nl.Uint64Attr(uint64(flags))),
		nl.NewRtAttr(nbdAttrTimeout, nl.Uint64Attr(60)),
		socks,
	}
}

// netlinkConnect starts device index with NBD_CMD_CONNECT, as nbd-client
// does by default.
func netlinkConnect(index uint32, size uint64, blockSize int, flags uint16, fds []int) error {
	if err := nbdRequest(nbdCmdConnect, connectAttrs(index, size, blockSize, flags, fds)...); err != nil {
		return fmt.Errorf("kernelclient: netlink NBD_CMD_CONNECT of /dev/nbd%d: %w", index, err)
	}
	return nil
}

// netlinkDisconnect sends NBD_CMD_DISCONNECT for device index: the kernel
// sends NBD_CMD_DISC on each connection and shuts its sockets down.
func netlinkDisconnect(index uint32) error {
	if err := nbdRequest(nbdCmdDisconnect, nl.NewRtAttr(nbdAttrIndex, nl.Uint32Attr(index))); err != nil {
		return fmt.Errorf("kernelclient: netlink NBD_CMD_DISCONNECT of /dev/nbd%d: %w", index, err)
	}
	return nil
}
