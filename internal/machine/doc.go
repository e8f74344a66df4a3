// Package machine is what a Go program running as a Linux guest's init does
// to the machine under it: mount the system file systems, load the kernel
// modules shipped in its initramfs, bring up a network interface (static
// or DHCP), wait for devices, and power off or reboot.
//
// Two programs share it: the appliance (through appliance/linux, which adds
// what is appliance-specific: its data disk, PCRs and configuration) and
// the NBD kernel-client test guest (storage/nbd/internal/kernelclient/
// guestinit). It knows neither, so the storage code's test guest does not
// depend on the appliance. Everything but this file is Linux only.
package machine
