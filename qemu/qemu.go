// Package qemu runs appliances under QEMU the way a rack boots them: OVMF
// firmware (with its own copy of the UEFI variables), a software TPM (swtpm,
// one state directory per appliance), q35 under TCG, a virtio data disk, user
// networking with host ports forwarded on 127.0.0.1, and the serial console
// captured to a file with wait-for-line helpers.
//
// A Machine always cleans up: Close kills QEMU's and swtpm's process groups.
// It is test and demo infrastructure; no production package imports it.
package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Default firmware files (Debian's ovmf package).
const (
	DefaultOVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	DefaultOVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// ErrTimeout reports that WaitForLine saw no matching line in time.
var ErrTimeout = errors.New("qemu: timed out waiting for console line")

// ErrExited reports that QEMU exited while a caller waited for a line.
var ErrExited = errors.New("qemu: machine exited")

// Forward forwards a TCP port on the host's loopback to the guest.
type Forward struct {
	// GuestPort is the TCP port inside the guest.
	GuestPort int
	// HostPort is the port on 127.0.0.1; 0 picks a free one.
	HostPort int
}

// Config describes one machine.
type Config struct {
	// Dir is the working directory for the console log, sockets and the
	// firmware variables copy. Required; the caller owns and removes it.
	Dir string

	// Kernel, Initrd and Append boot a kernel directly (-kernel/-initrd/
	// -append); OVMF still runs and measures them. Leave Kernel empty to boot
	// BootDisk through the firmware instead.
	Kernel, Initrd, Append string
	// BootDisk is a raw disk image the firmware boots from when Kernel is
	// empty (a GPT image with an EFI system partition).
	BootDisk string
	// DataDisk is a raw image attached as a virtio disk (/dev/vda when
	// booting with Kernel; after BootDisk otherwise). Optional.
	DataDisk string
	// DataDiskCache is QEMU's cache mode for DataDisk ("" = writeback).
	DataDiskCache string

	// TPMState is swtpm's state directory: reuse it to keep the same TPM
	// across boots. Empty: a fresh TPM under Dir. Ignored with NoTPM.
	TPMState string
	// NoTPM boots without a TPM.
	NoTPM bool

	// Forwards are the host->guest TCP port forwards (user networking; the
	// guest reaches the host's loopback at 10.0.2.2).
	Forwards []Forward
	// NoNetwork boots without a network card.
	NoNetwork bool

	// MemoryMiB is the guest RAM (default 1024).
	MemoryMiB int
	// CPUs is the number of virtual CPUs (default 1).
	CPUs int
	// CPUModel is QEMU's -cpu (default "max": TCG then emulates AES-NI and
	// SHA-NI, which Go's crypto uses; the generic code paths are many
	// times slower under emulation).
	CPUModel string

	// OVMFCode and OVMFVars override the firmware files (defaults above).
	OVMFCode, OVMFVars string
	// QEMU and SWTPM are the program paths (default: looked up on PATH).
	QEMU, SWTPM string
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	// Console, if set, also receives every console byte (e.g. os.Stdout).
	Console io.Writer
}

// Machine is a running QEMU with its swtpm.
type Machine struct {
	cfg      Config
	qemu     *exec.Cmd
	swtpm    *exec.Cmd
	swtpmEnd chan struct{} // closed when swtpm has exited
	started  time.Time
	forwards map[int]int // guest -> host

	logFile *os.File
	mu      sync.Mutex
	lines   []Line
	changed chan struct{} // closed and replaced on every new line or exit
	exited  bool
	exitErr error // for waiters: always wraps ErrExited
	waitErr error // QEMU's own exit status
	done    chan struct{}
	closeMu sync.Once
}

// Line is one console line with the time it arrived, relative to Start.
type Line struct {
	Text string
	At   time.Duration
}

// Start launches swtpm (unless NoTPM) and QEMU. The caller must Close the
// machine; tests use StartT, which registers Close with t.Cleanup.
func Start(ctx context.Context, cfg Config) (*Machine, error) {
	if cfg.Dir == "" {
		return nil, errors.New("qemu: Config.Dir is required")
	}
	if cfg.Kernel == "" && cfg.BootDisk == "" {
		return nil, errors.New("qemu: need Kernel or BootDisk")
	}
	setDefaults(&cfg)
	m := &Machine{cfg: cfg, forwards: map[int]int{}, changed: make(chan struct{}), done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			m.Close()
		}
	}()

	vars := filepath.Join(cfg.Dir, "OVMF_VARS.fd")
	if _, err := os.Stat(vars); errors.Is(err, os.ErrNotExist) {
		if err := copyFile(cfg.OVMFVars, vars); err != nil {
			return nil, fmt.Errorf("qemu: copying OVMF variables: %w", err)
		}
	}

	args := []string{
		"-machine", "q35", "-accel", "tcg",
		"-m", strconv.Itoa(cfg.MemoryMiB), "-smp", strconv.Itoa(cfg.CPUs), "-cpu", cfg.CPUModel,
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
		"-nodefaults",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + cfg.OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
	}
	if cfg.Kernel != "" {
		args = append(args, "-kernel", cfg.Kernel)
		if cfg.Initrd != "" {
			args = append(args, "-initrd", cfg.Initrd)
		}
		if cfg.Append != "" {
			args = append(args, "-append", cfg.Append)
		}
	} else {
		args = append(args,
			"-drive", "if=none,id=boot,format=raw,file="+cfg.BootDisk,
			"-device", "virtio-blk-pci,drive=boot,bootindex=0")
	}
	if cfg.DataDisk != "" {
		cache := cfg.DataDiskCache
		if cache == "" {
			cache = "writeback"
		}
		args = append(args,
			"-drive", "if=none,id=data,format=raw,cache="+cache+",file="+cfg.DataDisk,
			"-device", "virtio-blk-pci,drive=data")
	}
	if !cfg.NoNetwork {
		netdev := "user,id=net0"
		for _, f := range cfg.Forwards {
			hp := f.HostPort
			if hp == 0 {
				p, err := FreePort()
				if err != nil {
					return nil, err
				}
				hp = p
			}
			m.forwards[f.GuestPort] = hp
			netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", hp, f.GuestPort)
		}
		// No option ROM: the firmware never network-boots here, and loading
		// iPXE under TCG costs seconds.
		args = append(args, "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile=")
	}
	if !cfg.NoTPM {
		sock, err := m.startSWTPM(cfg)
		if err != nil {
			return nil, err
		}
		args = append(args,
			"-chardev", "socket,id=chrtpm,path="+sock,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
			"-device", "tpm-crb,tpmdev=tpm0")
	}
	args = append(args, cfg.ExtraArgs...)

	logFile, err := os.Create(m.ConsolePath())
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	m.logFile = logFile

	m.qemu = exec.Command(cfg.QEMU, args...)
	m.qemu.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := m.qemu.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	m.qemu.Stderr = &lockedWriter{w: &stderr}
	m.started = time.Now()
	if err := m.qemu.Start(); err != nil {
		return nil, fmt.Errorf("qemu: starting %s: %w", cfg.QEMU, err)
	}
	go m.readConsole(stdout, &stderr)

	// Stop the machine when the context ends.
	go func() {
		select {
		case <-ctx.Done():
			m.Close()
		case <-m.done:
		}
	}()
	ok = true
	return m, nil
}

func setDefaults(cfg *Config) {
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.CPUModel == "" {
		cfg.CPUModel = "max"
	}
	if cfg.OVMFCode == "" {
		cfg.OVMFCode = DefaultOVMFCode
	}
	if cfg.OVMFVars == "" {
		cfg.OVMFVars = DefaultOVMFVars
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.SWTPM == "" {
		cfg.SWTPM = "swtpm"
	}
}

// startSWTPM starts swtpm for QEMU and waits for its control socket.
func (m *Machine) startSWTPM(cfg Config) (string, error) {
	state := cfg.TPMState
	if state == "" {
		state = filepath.Join(cfg.Dir, "tpm")
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	sock := filepath.Join(cfg.Dir, "swtpm.sock")
	os.Remove(sock)
	m.swtpm = exec.Command(cfg.SWTPM, "socket", "--tpm2",
		"--tpmstate", "dir="+state,
		"--ctrl", "type=unixio,path="+sock,
		"--log", "file="+filepath.Join(cfg.Dir, "swtpm.log")+",level=1")
	m.swtpm.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out strings.Builder
	m.swtpm.Stdout = &lockedWriter{w: &out}
	m.swtpm.Stderr = m.swtpm.Stdout
	if err := m.swtpm.Start(); err != nil {
		return "", fmt.Errorf("qemu: starting swtpm: %w", err)
	}
	exited := make(chan error, 1)
	m.swtpmEnd = make(chan struct{})
	go func() { exited <- m.swtpm.Wait(); close(m.swtpmEnd) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			// swtpm keeps running in the background; reap it on exit.
			go func() { <-exited }()
			return sock, nil
		}
		select {
		case err := <-exited:
			return "", fmt.Errorf("qemu: swtpm exited: %v: %s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("qemu: swtpm socket %s did not appear", sock)
		}
	}
}

func (m *Machine) readConsole(r io.Reader, stderr *strings.Builder) {
	var sink io.Writer = m.logFile
	if m.cfg.Console != nil {
		sink = io.MultiWriter(m.logFile, m.cfg.Console)
	}
	br := bufio.NewReader(io.TeeReader(r, sink))
	for {
		s, err := br.ReadString('\n')
		if s != "" {
			// Serial consoles end lines with \r\n and firmware paints escape
			// sequences; keep the text readable for matching.
			text := strings.TrimRight(s, "\r\n")
			m.mu.Lock()
			m.lines = append(m.lines, Line{Text: text, At: time.Since(m.started)})
			m.notifyLocked()
			m.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	werr := m.qemu.Wait()
	m.mu.Lock()
	m.exited = true
	m.waitErr = werr
	if werr != nil {
		m.exitErr = fmt.Errorf("%w: %v: %s", ErrExited, werr, strings.TrimSpace(stderr.String()))
	} else {
		m.exitErr = ErrExited
	}
	m.notifyLocked()
	m.mu.Unlock()
	m.logFile.Sync()
	m.logFile.Close()
	close(m.done)
}

func (m *Machine) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// StartedAt is when QEMU was started.
func (m *Machine) StartedAt() time.Time { return m.started }

// ConsolePath is the file holding everything the serial console printed.
func (m *Machine) ConsolePath() string { return filepath.Join(m.cfg.Dir, "console.log") }

// HostPort returns the host port (on 127.0.0.1) forwarded to guestPort, or 0.
func (m *Machine) HostPort(guestPort int) int { return m.forwards[guestPort] }

// HostAddr returns "127.0.0.1:port" for the forward of guestPort.
func (m *Machine) HostAddr(guestPort int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.HostPort(guestPort)))
}

// Lines returns a copy of every console line so far.
func (m *Machine) Lines() []Line {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Line(nil), m.lines...)
}

// WaitForLine waits until a console line (any line since boot) matches re
// and returns it with its arrival time. It fails with ErrTimeout after
// timeout and with ErrExited if QEMU exits first.
func (m *Machine) WaitForLine(re *regexp.Regexp, timeout time.Duration) (Line, error) {
	return m.WaitForLineFrom(0, re, timeout)
}

// WaitForLineFrom is WaitForLine considering only lines from index from on
// (see Lines), to wait for a second occurrence after a known point.
func (m *Machine) WaitForLineFrom(from int, re *regexp.Regexp, timeout time.Duration) (Line, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	next := from
	for {
		m.mu.Lock()
		for ; next < len(m.lines); next++ {
			if re.MatchString(m.lines[next].Text) {
				l := m.lines[next]
				m.mu.Unlock()
				return l, nil
			}
		}
		exited, exitErr, changed := m.exited, m.exitErr, m.changed
		m.mu.Unlock()
		if exited {
			return Line{}, fmt.Errorf("waiting for %q: %w", re, exitErr)
		}
		select {
		case <-changed:
		case <-timer.C:
			return Line{}, fmt.Errorf("%w %q after %v", ErrTimeout, re, timeout)
		}
	}
}

// Wait waits for QEMU to exit (the guest powered off, or Close) and returns
// how it ended; a clean power-off returns nil.
func (m *Machine) Wait(timeout time.Duration) error {
	select {
	case <-m.done:
	case <-time.After(timeout):
		return fmt.Errorf("qemu: still running after %v", timeout)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.waitErr != nil {
		return m.exitErr
	}
	return nil
}

// Kill stops QEMU at once, like pulling the power cord; swtpm keeps running
// until Close so the TPM state is flushed as on real hardware.
func (m *Machine) Kill() {
	if m.qemu != nil && m.qemu.Process != nil {
		syscall.Kill(-m.qemu.Process.Pid, syscall.SIGKILL)
		<-m.done
	}
}

// Close kills QEMU and swtpm (whole process groups) and waits for QEMU.
// It is safe to call more than once.
func (m *Machine) Close() error {
	m.closeMu.Do(func() {
		if m.qemu != nil && m.qemu.Process != nil {
			syscall.Kill(-m.qemu.Process.Pid, syscall.SIGKILL)
			select {
			case <-m.done:
			case <-time.After(10 * time.Second):
			}
		}
		if m.swtpm != nil && m.swtpm.Process != nil {
			// SIGTERM lets swtpm write its state; then make sure it is gone.
			syscall.Kill(-m.swtpm.Process.Pid, syscall.SIGTERM)
			select {
			case <-m.swtpmEnd:
			case <-time.After(3 * time.Second):
				syscall.Kill(-m.swtpm.Process.Pid, syscall.SIGKILL)
				<-m.swtpmEnd
			}
		}
		if m.logFile != nil && m.qemu == nil {
			m.logFile.Close()
		}
	})
	return nil
}

// FreePort returns a currently unused TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("qemu: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
}
