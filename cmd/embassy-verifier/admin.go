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
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/fleet"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

// adminFlags configure the operators' admin API (docs/admin-api.md), a
// listener of its own beside the appliances' API.
type adminFlags struct {
	listen, cert, key, operatorCA *string
}

func addAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		listen:     fs.String("admin-listen", "", "admin API listen address (e.g. 127.0.0.1:8444; empty: no admin API)"),
		cert:       fs.String("admin-cert", "", "admin API server certificate (PEM; default: --cert)"),
		key:        fs.String("admin-key", "", "admin API server private key (PEM; default: --key)"),
		operatorCA: fs.String("operator-ca", "", "the operators' CA certificate(s) (PEM): admin API clients must present a certificate it issued"),
	}
}

// check reports a usage error in the admin flags.
func (a adminFlags) check() error {
	switch {
	case (*a.cert == "") != (*a.key == ""):
		return errors.New("--admin-cert and --admin-key go together")
	case *a.listen == "" && (*a.operatorCA != "" || *a.cert != ""):
		return errors.New("--operator-ca, --admin-cert and --admin-key need --admin-listen")
	case *a.listen != "" && *a.operatorCA == "":
		return errors.New("--admin-listen needs --operator-ca: the admin API only serves operators with a certificate")
	}
	return nil
}

// server returns the admin API's server and listener, or nils without
// --admin-listen. cert is the appliances' API certificate, the default;
// metrics is served at /metrics. The API has a handle of its own on the
// database at dsn, durable (verifier.OpenDurableDB): an operator's
// revocation answered 204 survives a power cut, while the appliances'
// hot path keeps its cheaper commits. The caller closes the handle once
// the server has shut down.
func (a adminFlags) server(ctx context.Context, dsn string, cert tls.Certificate, metrics http.Handler, log *slog.Logger) (*http.Server, net.Listener, *verifier.DB, error) {
	if *a.listen == "" {
		return nil, nil, nil, nil
	}
	ops, err := pki.ReadPoolFile(*a.operatorCA)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("operator CA: %w", err)
	}
	if *a.cert != "" {
		if cert, err = tls.LoadX509KeyPair(*a.cert, *a.key); err != nil {
			return nil, nil, nil, fmt.Errorf("admin API certificate: %w", err)
		}
	}
	db, err := verifier.OpenDurableDB(ctx, dsn)
	if err != nil {
		return nil, nil, nil, err
	}
	ok := false
	defer func() {
		if !ok {
			db.Close()
		}
	}()
	h, err := admin.NewHandler(admin.Options{
		DB: db, Operators: ops, Logger: log,
		Fleet:   fleet.NewHandler(fleet.Options{Source: db, Logger: log}),
		Metrics: metrics,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	hs := &http.Server{
		Handler:           h,
		TLSConfig:         admin.TLSConfig(cert, ops),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", *a.listen)
	if err != nil {
		return nil, nil, nil, err
	}
	ok = true
	log.Info("admin API serving", "addr", ln.Addr().String(), "operator_ca", *a.operatorCA)
	return hs, ln, db, nil
}

// newLogger returns the logger of --log-format: "text" or "json" lines
// (log/slog) on w.
func newLogger(format string, w io.Writer) (*slog.Logger, error) {
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
