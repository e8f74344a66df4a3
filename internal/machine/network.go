//go:build linux

package machine

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
)

// Network modes.
const (
	// Static sets Network.Address and the optional Network.Gateway.
	Static = "static"
	// DHCP asks for a lease.
	DHCP = "dhcp"
)

// Network says how to bring up one interface.
type Network struct {
	// Interface is the interface name, e.g. "eth0".
	Interface string
	// Mode is Static or DHCP.
	Mode string
	// Address is the static address in CIDR form (Static).
	Address string
	// Gateway is the static default gateway (Static, optional).
	Gateway string
}

// ConfigureNetwork waits up to timeout for n.Interface to appear (its
// driver may still be binding), brings it and the loopback up and
// configures it. It returns the address it set or the lease it got, for
// the log.
func ConfigureNetwork(ctx context.Context, n Network, timeout time.Duration) (string, error) {
	var link netlink.Link
	if !WaitFor(ctx, timeout, func() bool {
		l, err := netlink.LinkByName(n.Interface)
		link = l
		return err == nil
	}) {
		return "", fmt.Errorf("machine: network interface %s did not appear", n.Interface)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("machine: bringing up %s: %w", n.Interface, err)
	}
	switch n.Mode {
	case Static:
		return n.Address, configureStatic(link, n)
	case DHCP:
		return configureDHCP(ctx, link, n.Interface, timeout)
	}
	return "", fmt.Errorf("machine: unknown network mode %q", n.Mode)
}

func configureStatic(link netlink.Link, n Network) error {
	addr, err := netlink.ParseAddr(n.Address)
	if err != nil {
		return fmt.Errorf("machine: address %q: %w", n.Address, err)
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("machine: setting %s on %s: %w", n.Address, n.Interface, err)
	}
	if n.Gateway != "" {
		gw := net.ParseIP(n.Gateway)
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("machine: default route via %s: %w", n.Gateway, err)
		}
	}
	return nil
}

func configureDHCP(ctx context.Context, link netlink.Link, name string, timeout time.Duration) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	results := dhclient.SendRequests(dctx, []netlink.Link{link}, true, false,
		dhclient.Config{Timeout: 3 * time.Second, Retries: 3}, timeout)
	for r := range results {
		if r.Err != nil {
			continue
		}
		if err := r.Lease.Configure(); err != nil {
			return "", fmt.Errorf("machine: applying DHCP lease: %w", err)
		}
		return r.Lease.String(), nil
	}
	return "", fmt.Errorf("machine: no DHCP lease on %s", name)
}
