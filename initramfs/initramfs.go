// Package initramfs builds the appliance's u-root initramfs: u-root's init,
// the appliance program (started by init as its uinit), the kernel modules
// the appliance loads itself, and the appliance configuration.
//
// Builds are reproducible: the same inputs give a byte-identical compressed
// archive (sorted entries, zero mtimes, root owner, fixed modes, gzip without
// timestamp or name), so the firmware's PCR 9 measurement of the initrd can
// be predicted at build time. The layout is documented in docs/appliance.md.
package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/dataembassy/embassy/attest/measure"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"
)

// Paths inside the initramfs (relative to its root).
const (
	// InitPath is u-root's init; /init links to it.
	InitPath = "bin/init"
	// AppliancePath is the appliance program. It keeps its own name (u-root's
	// init runs every "uinit" it finds); bin/uinit is a symlink to it. The
	// appliance's measurement plan (attest/measure) defines it, since the
	// appliance reads and measures itself there.
	AppliancePath = measure.BinaryFile
	// ConfigPath is the appliance configuration (JSON, see package
	// appliance), measured by the appliance as attest/measure.ConfigPath.
	ConfigPath = measure.ConfigFile
	// ModulesDir holds the kernel modules the appliance loads. It is not
	// lib/modules, whose top-level *.ko u-root's init would load by itself.
	ModulesDir = "lib/embassy/modules"
	// ModulesOrder lists ModulesDir's files, one a line, in load order.
	ModulesOrder = ModulesDir + "/order"
	// ShellPath is the debug shell, present only in debug images.
	ShellPath = "bin/sh"
)

// ApplianceCmdPackage and InitCmdPackage are the Go packages BuildBinaries
// compiles.
const (
	ApplianceCmdPackage = "github.com/dataembassy/embassy/cmd/embassy-appliance"
	InitCmdPackage      = "github.com/u-root/u-root/cmds/core/init"
)

// Options describe one initramfs. Every path is a file on the build host.
type Options struct {
	// Init is the u-root init binary (see BuildBinaries). Required.
	Init string
	// Appliance is the uinit program binary. Required.
	Appliance string
	// Config is the appliance configuration, stored verbatim at ConfigPath.
	// Optional: without it the image carries no configuration.
	Config []byte
	// Modules are the kernel modules to include, in load order (see
	// ResolveModules). Optional.
	Modules []Module
	// Shell, if set, is a static shell binary (e.g. busybox-static's)
	// included at ShellPath: a debug image. Production images leave it
	// empty and carry no shell. (u-root's gosh is not used: its
	// dependencies are not in Embassy's module graph.)
	Shell string
	// Extra maps more files to add (path inside the archive -> contents), for
	// tests and tools. Mode 0644.
	Extra map[string][]byte
	// Compression is how the cpio archive is compressed: CompressGzip
	// (default, "") or CompressNone. Both are deterministic, so PCR 9 stays
	// predictable from the archive bytes either way.
	Compression Compression
}

// Compression names an initramfs compression the kernel can unpack.
type Compression string

const (
	// CompressGzip is gzip at best compression (the default).
	CompressGzip Compression = "gzip"
	// CompressNone is the plain newc cpio archive: larger to load and
	// measure, nothing to inflate.
	CompressNone Compression = "none"
)

// ErrCompression reports an unknown Options.Compression.
var ErrCompression = errors.New("initramfs: unknown compression")

// Result describes a built initramfs.
type Result struct {
	// Size is the compressed archive size in bytes.
	Size int64
	// SHA256 is the digest of the compressed archive: the firmware measures
	// exactly these bytes into PCR 9 ("Linux initrd" event).
	SHA256 [32]byte
	// UncompressedSize is the size of the cpio archive before compression.
	UncompressedSize int64
}

// String formats the result for logs.
func (r Result) String() string {
	return fmt.Sprintf("%d bytes (cpio %d), sha256 %s", r.Size, r.UncompressedSize, hex.EncodeToString(r.SHA256[:]))
}

// Build writes a newc cpio archive for opts to out, compressed as
// opts.Compression says (gzip by default).
func Build(opts Options, out io.Writer) (Result, error) {
	if opts.Init == "" || opts.Appliance == "" {
		return Result{}, errors.New("initramfs: Init and Appliance binaries are required")
	}
	switch opts.Compression {
	case "", CompressGzip, CompressNone:
	default:
		return Result{}, fmt.Errorf("%w: %q", ErrCompression, opts.Compression)
	}
	stage, err := os.MkdirTemp("", "embassy-initramfs-")
	if err != nil {
		return Result{}, fmt.Errorf("initramfs: %w", err)
	}
	defer os.RemoveAll(stage)

	// Files are staged with fixed modes: the archive takes modes from the
	// staged copies, and the inputs' own modes depend on the build host.
	var files []string
	add := func(dest string, mode os.FileMode, write func(string) error) error {
		src := filepath.Join(stage, "root", dest)
		if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
			return err
		}
		if err := write(src); err != nil {
			return fmt.Errorf("initramfs: staging %s: %w", dest, err)
		}
		if err := os.Chmod(src, mode); err != nil {
			return err
		}
		files = append(files, src+":"+dest)
		return nil
	}
	copyFrom := func(from string) func(string) error {
		return func(to string) error { return copyFile(from, to) }
	}
	content := func(b []byte) func(string) error {
		return func(to string) error { return os.WriteFile(to, b, 0o600) }
	}

	if err := add(InitPath, 0o755, copyFrom(opts.Init)); err != nil {
		return Result{}, err
	}
	if err := add(AppliancePath, 0o755, copyFrom(opts.Appliance)); err != nil {
		return Result{}, err
	}
	if opts.Config != nil {
		if err := add(ConfigPath, 0o644, content(opts.Config)); err != nil {
			return Result{}, err
		}
	}
	if len(opts.Modules) > 0 {
		var order strings.Builder
		for _, m := range opts.Modules {
			name := m.Name + ".ko"
			if err := add(ModulesDir+"/"+name, 0o644, copyFrom(m.Path)); err != nil {
				return Result{}, err
			}
			order.WriteString(name + "\n")
		}
		if err := add(ModulesOrder, 0o644, content([]byte(order.String()))); err != nil {
			return Result{}, err
		}
	}
	if opts.Shell != "" {
		if err := add(ShellPath, 0o755, copyFrom(opts.Shell)); err != nil {
			return Result{}, err
		}
	}
	for dest, b := range opts.Extra {
		if err := add(strings.TrimPrefix(dest, "/"), 0o644, content(b)); err != nil {
			return Result{}, err
		}
	}

	cpioPath := filepath.Join(stage, "initramfs.cpio")
	quiet := &llog.Logger{Sink: llog.SinkFor(func(string, ...any) {}), Level: slog.LevelError + 1}
	if err := uimage.Create(quiet,
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithSkipLDD(), // static binaries only
		uimage.WithFiles(files...),
		uimage.WithInit("/"+InitPath),
		uimage.WithUinit("/"+AppliancePath),
		uimage.WithTempDir(stage),
		uimage.WithCPIOOutput(cpioPath),
	); err != nil {
		return Result{}, fmt.Errorf("initramfs: creating archive: %w", err)
	}
	raw, err := os.ReadFile(cpioPath)
	if err != nil {
		return Result{}, fmt.Errorf("initramfs: %w", err)
	}

	var buf bytes.Buffer
	switch opts.Compression {
	case "", CompressGzip:
		// gzip: the kernel always supports it; no name, no mtime, fixed level.
		zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if err != nil {
			return Result{}, err
		}
		if _, err := zw.Write(raw); err != nil {
			return Result{}, err
		}
		if err := zw.Close(); err != nil {
			return Result{}, err
		}
	case CompressNone:
		buf.Write(raw)
	default:
		return Result{}, fmt.Errorf("%w: %q", ErrCompression, opts.Compression)
	}
	res := Result{Size: int64(buf.Len()), SHA256: sha256.Sum256(buf.Bytes()), UncompressedSize: int64(len(raw))}
	if _, err := out.Write(buf.Bytes()); err != nil {
		return Result{}, fmt.Errorf("initramfs: writing archive: %w", err)
	}
	return res, nil
}

// BuildFile is Build writing to the file at path (created or truncated).
func BuildFile(opts Options, path string) (Result, error) {
	f, err := os.Create(path)
	if err != nil {
		return Result{}, fmt.Errorf("initramfs: %w", err)
	}
	res, err := Build(opts, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("initramfs: %w", cerr)
	}
	return res, err
}

// GoBuild compiles the Go package pkg into out as a static, reproducible
// binary for the appliance: CGO_ENABLED=0, GOOS=linux, GOARCH=amd64,
// GOAMD64=v1, -trimpath, no VCS stamp, stripped. dir is the module directory
// to run in (empty: the current directory).
func GoBuild(ctx context.Context, dir, pkg, out string) error {
	goBin := filepath.Join(goRoot(), "bin", "go")
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid=", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1", "GOFLAGS=-mod=readonly")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initramfs: go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

func goRoot() string {
	if r := os.Getenv("GOROOT"); r != "" {
		return r
	}
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return "/usr/local/go"
}

// Binaries are the programs an appliance image is made of.
type Binaries struct {
	Init, Appliance string
}

// BuildBinaries compiles u-root's init and the appliance into outDir.
// moduleDir is the Embassy module's root directory.
func BuildBinaries(ctx context.Context, moduleDir, outDir string) (Binaries, error) {
	b := Binaries{
		Init:      filepath.Join(outDir, "init"),
		Appliance: filepath.Join(outDir, "embassy-appliance"),
	}
	if err := GoBuild(ctx, moduleDir, InitCmdPackage, b.Init); err != nil {
		return Binaries{}, err
	}
	if err := GoBuild(ctx, moduleDir, ApplianceCmdPackage, b.Appliance); err != nil {
		return Binaries{}, err
	}
	return b, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
