// Command embassy-verifier is the home state's attestation verifier: it
// serves the appliance-facing HTTPS JSON API (/v1/...) and, on a listener
// of its own, the operators' admin API (/admin/v1/..., mutual TLS against
// the operators' CA; docs/admin-api.md) that embassyctl drives.
//
//	embassy-verifier --db /var/lib/embassy/verifier.db --listen :8443 \
//	    --cert server.pem --key server.key \
//	    --admin-listen 127.0.0.1:8444 --operator-ca operators/ca.pem
//	embassy-verifier --init-tls DIR --hosts verifier.example,10.0.0.5
//
// --init-tls writes a private CA (ca.pem, the file appliances pin) and a
// server certificate and key signed by it, then exits.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// errUsage marks an error caused by wrong arguments; main exits 2 for it,
// as embassyctl does.
var errUsage = errors.New("usage error")

// stdout receives --help and what --init-tls wrote.
var stdout io.Writer = os.Stdout

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "embassy-verifier:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run serves until ctx ends. ready, when set, gets the listening address.
// For --help it prints the usage to stdout and returns flag.ErrHelp; for
// wrong arguments it prints the usage to logw and returns an errUsage.
func run(ctx context.Context, args []string, logw io.Writer, ready func(addr string)) error {
	fs := flag.NewFlagSet("embassy-verifier", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // usage and errors are printed below, each to its stream
	usage := func(w io.Writer, format string, a ...any) error {
		fmt.Fprintln(w, "usage: embassy-verifier --cert F --key F [flags]\n       embassy-verifier --init-tls DIR [--hosts H,...]\n\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
	}
	dbPath := fs.String("db", "/var/lib/embassy/verifier.db", "the verifier's state: a SQLite file, or a postgres:// URL shared by several verifiers (created and migrated if needed)")
	listen := fs.String("listen", "127.0.0.1:8443", "HTTPS listen address")
	certFile := fs.String("cert", "", "server certificate (PEM)")
	keyFile := fs.String("key", "", "server private key (PEM)")
	lease := fs.Duration("lease", 10*time.Minute, "lease granted per successful attestation")
	nonceTTL := fs.Duration("nonce-ttl", time.Minute, "nonce lifetime")
	initTLS := fs.String("init-tls", "", "write a CA and server certificate into this directory and exit")
	hosts := fs.String("hosts", "localhost,127.0.0.1", "with --init-tls: comma-separated server names and IPs")
	adm := addAdminFlags(fs)
	logFormat := fs.String("log-format", "text", "log lines as text or json (log/slog)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout, "")
			return err
		}
		return usage(logw, "%v", err)
	}
	if fs.NArg() != 0 {
		return usage(logw, "unexpected arguments %q", fs.Args())
	}
	if *initTLS != "" {
		return writeTLS(*initTLS, strings.Split(*hosts, ","))
	}
	if *certFile == "" || *keyFile == "" {
		return usage(logw, "--cert and --key are required (see --init-tls)")
	}
	if err := adm.check(); err != nil {
		return usage(logw, "%v", err)
	}
	log, err := newLogger(*logFormat, logw)
	if err != nil {
		return usage(logw, "%v", err)
	}

	db, err := verifier.OpenDB(ctx, *dbPath)
	if err != nil {
		return err
	}
	defer db.Close()
	if rep, err := db.VerifyAudit(ctx, 0, ""); err != nil {
		return err
	} else if len(rep.Problems) > 0 {
		log.Error("audit log damaged", "problems", len(rep.Problems), "first", rep.Problems[0].Detail)
	} else {
		// Operators can keep this head to detect a truncated log later.
		log.Info("audit log intact", "records", rep.Records, "head", fmt.Sprintf("%d:%s", rep.HeadSeq, rep.HeadHash))
	}
	metrics := verifier.NewMetrics()
	srv, err := verifier.NewServer(verifier.Options{DB: db, Lease: *lease, NonceTTL: *nonceTTL, Logger: log, Metrics: metrics})
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Addr:              *listen,
		Handler:           srv,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// TLS handshake failures and the like, in the --log-format too.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Info("serving", "addr", ln.Addr().String(), "db", verifier.RedactDSN(*dbPath))
	servers := []*http.Server{hs}
	errc := make(chan error, 2)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()
	as, aln, opsDB, err := adm.server(ctx, *dbPath, cert, metrics.Handler(), log)
	if err != nil {
		hs.Close()
		return err
	}
	if opsDB != nil {
		defer opsDB.Close() // after the servers have shut down
	}
	if as != nil {
		servers = append(servers, as)
		go func() { errc <- as.ServeTLS(aln, "", "") }()
	}
	if ready != nil {
		ready(ln.Addr().String())
	}
	var err2 error
	select {
	case err2 = <-errc:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		if err := s.Shutdown(sctx); err2 == nil {
			err2 = err
		}
	}
	return err2
}

// writeTLS makes a private CA and a server certificate for hosts.
func writeTLS(dir string, hosts []string) error {
	ca, err := pki.NewCA("Embassy verifier CA", 10*365*24*time.Hour)
	if err != nil {
		return err
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: hosts[0], Usage: pki.Server, Hosts: hosts, Validity: 2 * 365 * 24 * time.Hour})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := []struct {
		name string
		pem  []byte
		mode os.FileMode
	}{
		{"ca.pem", ca.CertPEM(), 0o644},
		{"server.pem", leaf.CertPEM(), 0o644},
		{"server.key", leaf.KeyPEM(), 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.pem, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s/{ca.pem,server.pem,server.key}; appliances pin ca.pem\n", dir)
	return nil
}
