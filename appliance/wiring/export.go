package wiring

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/storage"
	"github.com/dataembassy/embassy/storage/nbd"
)

// Exporter implements appliance.Exporter with storage/nbd over mutual TLS.
type Exporter struct {
	// Config is the nbd section of the appliance configuration.
	Config appliance.NBDConfig
	// Logger receives connection events.
	Logger *slog.Logger
	// Stats, if set, is called with the server once it exists (tests and
	// status reporting read its counters).
	Stats func(*nbd.Server)
	// Observer, if set, is told of every NBD request (appliance/metrics).
	Observer nbd.Observer
}

// ErrNotBackend reports a store that cannot back an NBD export.
var ErrNotBackend = errors.New("wiring: store does not implement nbd.Backend")

// Serve listens on Config.Listen and serves store as every configured
// export until ctx ends.
func (e *Exporter) Serve(ctx context.Context, store appliance.Store, id *appliance.ServerIdentity, ready func(string)) error {
	backend, err := asBackend(store)
	if err != nil {
		return err
	}
	clientCAs, err := appliance.ParseCertPool(e.Config.ClientCAPEM)
	if err != nil {
		return fmt.Errorf("wiring: client CA: %w", err)
	}
	opts := nbd.ServerOptions{
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{id.Certificate},
			ClientCAs:    clientCAs,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS13,
		},
		Logger:   e.Logger,
		Observer: e.Observer,
	}
	for _, ex := range e.Config.Exports {
		opts.Exports = append(opts.Exports, nbd.Export{
			Name: ex.Name, Description: "Embassy authenticated store", Backend: backend, MultiConn: true,
		})
		for _, g := range ex.Grants {
			access := nbd.ReadOnly
			if g.Access == "rw" {
				access = nbd.ReadWrite
			}
			opts.Grants = append(opts.Grants, nbd.Grant{Identity: g.Identity, Export: ex.Name, Access: access})
		}
	}
	srv, err := nbd.NewServer(opts)
	if err != nil {
		return err
	}
	if e.Stats != nil {
		e.Stats(srv)
	}
	l, err := net.Listen("tcp", e.Config.Listen)
	if err != nil {
		return fmt.Errorf("wiring: listen %s: %w", e.Config.Listen, err)
	}
	ready(l.Addr().String())
	return srv.Serve(ctx, l)
}

// asBackend returns store as an NBD backend: an authenticated store
// through StoreBackend, anything else if it is one already.
func asBackend(store appliance.Store) (nbd.Backend, error) {
	switch st := store.(type) {
	case *storage.Store:
		return StoreBackend{st}, nil
	case nbd.Backend:
		return st, nil
	}
	return nil, ErrNotBackend
}
