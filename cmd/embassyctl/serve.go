package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/dataembassy/embassy/appliance/wiring"
	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/storage"
	"github.com/dataembassy/embassy/storage/nbd"
)

func init() {
	register(command{
		name:    "serve",
		summary: "serve a block device over NBD with mutual TLS",
		run: func(args []string, stdout, stderr io.Writer) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serve(ctx, args, stdout, stderr)
		},
	})
}

// grantList collects repeated --grant flags.
type grantList []nbd.Grant

func (g *grantList) String() string { return fmt.Sprint(*g) }

// Set parses identity=export:rw or identity=export:ro. The identity may
// itself contain '=' (URIs); the last '=' separates it.
func (g *grantList) Set(v string) error {
	i := strings.LastIndex(v, "=")
	if i <= 0 {
		return fmt.Errorf("grant %q: want identity=export:rw|ro", v)
	}
	id, rest := v[:i], v[i+1:]
	j := strings.LastIndex(rest, ":")
	if j < 0 {
		return fmt.Errorf("grant %q: want identity=export:rw|ro", v)
	}
	var a nbd.Access
	switch rest[j+1:] {
	case "rw":
		a = nbd.ReadWrite
	case "ro":
		a = nbd.ReadOnly
	default:
		return fmt.Errorf("grant %q: access must be rw or ro", v)
	}
	*g = append(*g, nbd.Grant{Identity: id, Export: rest[:j], Access: a})
	return nil
}

// serve runs `embassyctl serve` until ctx is cancelled.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "(--file F | --store S --kek K) [flags]", stdout, stderr)
	listen := fs.String("listen", "127.0.0.1:10809", "address to listen on")
	file := fs.String("file", "", "serve this plain (unencrypted) file or block device")
	storePath := fs.String("store", "", "serve the authenticated store on this file or block device")
	kekFile, counterFile := addKEKFlags(fs, "; with --store")
	formatSize := fs.String("format", "", "first format a new store of this logical size (e.g. 1G) at --store, destroying its contents; the file is allocated in full (2.0625x the size plus 16 MiB)")
	export := fs.String("export", "disk", "export name")
	desc := fs.String("description", "", "export description")
	readOnly := fs.Bool("read-only", false, "export read-only")
	certFile := fs.String("tls-cert", "", "server certificate (PEM)")
	keyFile := fs.String("tls-key", "", "server private key (PEM)")
	caFile := fs.String("client-ca", "", "CA certificates client certificates must chain to (PEM)")
	plaintext := fs.Bool("plaintext", false, "serve without TLS, to anyone (local benchmarks only)")
	depth := fs.Int("queue-depth", 0, "requests in flight per connection (0: default)")
	verbose := fs.Bool("v", false, "log every connection")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (for benchmarks)")
	var grants grantList
	fs.Var(&grants, "grant", "identity=export:rw|ro; identity is a certificate CN or URI SAN, or * (repeatable)")
	if err := fs.parse(args); err != nil {
		return err
	}
	if (*file == "") == (*storePath == "") {
		return fs.usageError("exactly one of --file and --store is required")
	}
	if *storePath != "" && *kekFile == "" {
		return fs.usageError("--store needs --kek")
	}
	if *storePath == "" && (*kekFile != "" || *counterFile != "" || *formatSize != "") {
		return fs.usageError("--kek, --counter and --format go with --store")
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	opts := nbd.ServerOptions{Plaintext: *plaintext, QueueDepth: *depth}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	switch {
	case *plaintext:
		if *certFile != "" || *keyFile != "" || *caFile != "" {
			return fs.usageError("--plaintext excludes the TLS flags")
		}
		if len(grants) == 0 {
			grants = append(grants, nbd.Grant{Identity: nbd.AnyIdentity, Export: *export, Access: nbd.ReadWrite})
		}
	case *certFile == "" || *keyFile == "" || *caFile == "":
		return fs.usageError("--tls-cert, --tls-key and --client-ca are required (or --plaintext)")
	default:
		cfg, err := serverTLS(*certFile, *keyFile, *caFile)
		if err != nil {
			return err
		}
		opts.TLSConfig = cfg
		if len(grants) == 0 {
			return fs.usageError("no --grant: nobody could connect")
		}
	}
	opts.Grants = grants

	var backend nbd.Backend
	source := *file
	if *file != "" {
		f, err := nbd.OpenFile(*file, *readOnly)
		if err != nil {
			return err
		}
		defer f.Close()
		backend = f
	} else {
		source = *storePath
		st, closeStore, err := openStore(*storePath, *kekFile, *counterFile, *formatSize, *readOnly, opts.Logger)
		if err != nil {
			return err
		}
		defer func() {
			if err := closeStore(); err != nil {
				fmt.Fprintf(stderr, "closing store: %v\n", err)
			}
		}()
		backend = wiring.StoreBackend{Store: st}
	}
	opts.Exports = []nbd.Export{{
		Name: *export, Description: *desc, Backend: backend,
		ReadOnly: *readOnly, MultiConn: true,
	}}
	srv, err := nbd.NewServer(opts)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "serving %s as %q on %s\n", source, *export, l.Addr())
	err = srv.Serve(ctx, l)
	st := srv.Stats()
	fmt.Fprintf(stdout, "stopped: %d connections, %d requests, %d refused, %d integrity errors\n",
		st.Connections, st.Requests, st.Refused, st.IntegrityErrors)
	return err
}

func serverTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	pool, err := pki.ReadPoolFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool}, nil
}

// openStore opens (after formatting, if formatSize is set) the
// authenticated store at path. The returned function closes store and
// device.
func openStore(path, kekFile, counterFile, formatSize string, readOnly bool, log *slog.Logger) (*storage.Store, func() error, error) {
	kek, err := readKEKFile(kekFile)
	if err != nil {
		return nil, nil, err
	}
	var counter storage.Counter
	if counterFile != "" {
		counter = storage.NewFileCounter(counterFile)
	}
	open := storage.OpenOptions{KEK: kek, Counter: counter, ReadOnly: readOnly, Logger: log}
	var dev *storage.FileDevice
	var st *storage.Store
	if formatSize != "" {
		if readOnly {
			return nil, nil, fmt.Errorf("%w: --format with --read-only", errUsage)
		}
		size, err := parseSize(formatSize) // shared with `embassyctl store`
		if err != nil || size <= 0 {
			return nil, nil, fmt.Errorf("%w: --format %q: want a positive size such as 1G", errUsage, formatSize)
		}
		// Two slots per data block plus metadata, allocated in full.
		dev, err = storage.CreateFileDevice(path, 2*size+size/16+16<<20)
		if err != nil {
			return nil, nil, err
		}
		if err := dev.Allocate(); err != nil {
			dev.Close()
			return nil, nil, err
		}
		st, err = storage.Format(dev, storage.FormatOptions{KEK: kek, Size: size, Counter: counter, Open: open})
		if err != nil {
			dev.Close()
			return nil, nil, fmt.Errorf("format store: %w", err)
		}
	} else {
		dev, err = storage.OpenFileDevice(path, readOnly)
		if err != nil {
			return nil, nil, err
		}
		st, err = storage.Open(dev, open)
		if err != nil {
			dev.Close()
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
	}
	return st, func() error {
		err := st.Close()
		if cerr := dev.Close(); err == nil {
			err = cerr
		}
		return err
	}, nil
}
