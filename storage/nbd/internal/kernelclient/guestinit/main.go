//go:build linux

// Command guestinit is the /init of the storage/nbd kernel client test's
// QEMU guest. It mounts proc, sys and dev, loads the NBD and virtio
// network modules, brings up eth0 with a static address, and for each
// export in kernelclient.ConfigPath negotiates TLS and NBD_OPT_GO itself,
// attaches /dev/nbdN through the kernel client, runs the workload
// (kernelclient.Run), disconnects, and prints machine-readable lines:
//
//	KCLIENT export=NAME attach size=N flags=0xF minblock=N prefblock=N maxblock=N
//	KCLIENT export=NAME step=STEP ...
//	KCLIENT export=NAME result=ok sha256=HEX | result=fail err="..."
//	KCLIENT export=NAME relayed connection=N to_server=N to_kernel=N requests=N replies=N unanswered=N slowest_reply_ms=N malformed="..."
//	KCLIENT export=NAME disconnect=ok | disconnect=fail err="..."
//	KCLIENT export=NAME kernel="..."   (each NBD driver message meanwhile)
//	KCLIENT-ERROR err="..."      (set-up failures)
//	KCLIENT-DONE
//
// then powers the machine off.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dataembassy/embassy/internal/machine"
	"github.com/dataembassy/embassy/storage/nbd/internal/kernelclient"
)

// watchdog bounds the whole run: a hang (in the kernel client, the proxy
// or the server) is reported with goroutine stacks and the kernel's
// blocked tasks instead of a silent test timeout.
const watchdog = 4 * time.Minute

// networkTimeout bounds waiting for eth0 to appear after virtio-net loads
// (what appliance/linux waits by default).
const networkTimeout = 20 * time.Second

func main() {
	time.AfterFunc(watchdog, stuck)
	if err := setup(); err != nil {
		fmt.Printf("KCLIENT-ERROR err=%q\n", err.Error())
	}
	fmt.Println("KCLIENT-DONE")
	// The serial console drops what is printed right before power-off.
	machine.PowerOff()
}

// stuck prints diagnostics and powers off.
func stuck() {
	fmt.Printf("KCLIENT-ERROR err=%q\n", fmt.Sprintf("watchdog: still running after %v", watchdog))
	buf := make([]byte, 1<<20)
	for _, l := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n") {
		fmt.Println("KCLIENT-STACK", l)
	}
	// Blocked tasks (sysrq w) to the console, kernel stacks included.
	os.WriteFile("/proc/sys/kernel/printk", []byte("8"), 0o644)
	os.WriteFile("/proc/sysrq-trigger", []byte("w"), 0o200)
	time.Sleep(2 * time.Second)
	fmt.Println("KCLIENT-DONE")
	machine.PowerOff()
}

func setup() error {
	if err := machine.MountSystem(); err != nil {
		return err
	}
	// Keep kernel messages off the console so they cannot split our lines.
	os.WriteFile("/proc/sys/kernel/printk", []byte("1"), 0o644)

	raw, err := os.ReadFile(kernelclient.ConfigPath)
	if err != nil {
		return err
	}
	var cfg kernelclient.GuestConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if _, err := machine.LoadModules(kernelclient.ModulesDir, cfg.ModuleParams); err != nil {
		return err
	}
	// Raw system calls: an os.File would wait in the poller instead of
	// returning EAGAIN at the end of the log.
	klog, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("/dev/kmsg: %w", err)
	}
	defer unix.Close(klog)
	if _, err := unix.Seek(klog, 0, io.SeekEnd); err != nil {
		return fmt.Errorf("/dev/kmsg: %w", err)
	}
	ctx := context.Background()
	if _, err := machine.ConfigureNetwork(ctx, machine.Network{Interface: "eth0", Mode: machine.Static, Address: cfg.Address}, networkTimeout); err != nil {
		return err
	}
	tlsCfg, err := clientTLS(&cfg)
	if err != nil {
		return err
	}
	for _, e := range cfg.Exports {
		runExport(&cfg, tlsCfg, e)
		for _, msg := range driverMessages(klog) {
			fmt.Printf("KCLIENT export=%s kernel=%q\n", e.Name, msg)
		}
	}
	return nil
}

// driverMessages returns the NBD driver's messages in the kernel log
// (/dev/kmsg, opened non-blocking) since the last call: a request that
// timed out, a connection given up. The workload's results do not show
// those once the kernel has retried on another connection.
func driverMessages(klog int) []string {
	var msgs []string
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(klog, buf)
		if errors.Is(err, unix.EPIPE) {
			continue // records were overwritten before we read them
		}
		if err != nil || n <= 0 {
			return msgs
		}
		// A record is "level,seq,time,flags;message\n" and continuation lines.
		rec := string(buf[:n])
		_, msg, _ := strings.Cut(rec, ";")
		msg, _, _ = strings.Cut(msg, "\n")
		if strings.Contains(msg, "nbd") {
			msgs = append(msgs, msg)
		}
	}
}

func clientTLS(cfg *kernelclient.GuestConfig) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cfg.CA)) {
		return nil, errors.New("no CA certificate in config")
	}
	cert, err := tls.X509KeyPair([]byte(cfg.Cert), []byte(cfg.Key))
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return &tls.Config{RootCAs: pool, ServerName: cfg.ServerName, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func runExport(cfg *kernelclient.GuestConfig, tlsCfg *tls.Config, e kernelclient.GuestExport) {
	say := func(format string, args ...any) {
		fmt.Printf("KCLIENT export=%s "+format+"\n", append([]any{e.Name}, args...)...)
	}
	var conns []*kernelclient.Export
	for range max(e.Connections, 1) {
		ex, err := connect(cfg, tlsCfg, e.Name)
		if err != nil {
			for _, c := range conns {
				c.Conn.Close()
			}
			say("result=fail err=%q", err.Error())
			return
		}
		conns = append(conns, ex)
	}
	ex := conns[0]
	via := "ioctl"
	if e.Netlink {
		via = "netlink"
	}
	say("attach size=%d flags=%#x minblock=%d prefblock=%d maxblock=%d connections=%d via=%s",
		ex.Size, ex.Flags, ex.MinBlock, ex.PrefBlock, ex.MaxBlock, len(conns), via)
	d, err := kernelclient.Attach(e.Device, conns, kernelclient.AttachOptions{BlockSize: e.BlockSize, Netlink: e.Netlink})
	if err != nil {
		say("result=fail err=%q", err.Error())
		return
	}
	if e.ReadOnly {
		res, err := kernelclient.CheckReadOnly(d, int64(ex.Size))
		switch {
		case err != nil:
			say("result=fail err=%q", err.Error())
		case res.WriteErr == nil:
			say("result=fail err=%q", "the kernel accepted a write on a read-only export")
		default:
			say("result=ok sha256=%s kernel_ro=%t write_err=%q", res.SHA256, res.KernelRO, res.WriteErr.Error())
		}
	} else {
		res, err := kernelclient.Run(d, kernelclient.Seed(e.Name), int64(ex.Size), func(step string) { say("%s", step) })
		if err != nil {
			say("result=fail err=%q", err.Error())
		} else {
			say("result=ok sha256=%s", res.SHA256)
		}
	}
	say("disconnecting")
	err = d.Disconnect()
	for i, r := range d.Relayed() {
		say("relayed connection=%d to_server=%d to_kernel=%d requests=%d replies=%d unanswered=%d slowest_reply_ms=%d malformed=%q",
			i, r.ToServer, r.ToKernel, r.Requests, r.Replies, r.Unanswered, r.SlowestReply.Milliseconds(), r.Malformed)
	}
	if err != nil {
		say("disconnect=fail err=%q", err.Error())
	} else {
		say("disconnect=ok")
	}
}

// connect dials the server and negotiates the export over TLS.
func connect(cfg *kernelclient.GuestConfig, tlsCfg *tls.Config, name string) (*kernelclient.Export, error) {
	// The network may take a moment after the link comes up.
	var conn net.Conn
	var err error
	for range 20 {
		if conn, err = net.DialTimeout("tcp", cfg.Server, 5*time.Second); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	ex, err := kernelclient.Negotiate(conn, tlsCfg, name)
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return ex, nil
}
