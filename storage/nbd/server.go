// Package nbd is Embassy's Network Block Device server: it exports block
// backends (the authenticated store, or a plain file for comparison) to
// ordinary NBD clients (qemu, libnbd's tools, fio, the Linux kernel) over
// X.509 mutual TLS.
//
// It implements the fixed-newstyle handshake, structured replies,
// base:allocation block status and many requests in flight per connection
// with replies out of order. A client's certificate identity maps through a
// table of grants to the exports it may see and whether it may write.
// docs/nbd-protocol.md describes the subset of the protocol implemented,
// the authorization model, limits and error mapping.
package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Access is what a grant allows on an export.
type Access int

const (
	// ReadOnly allows reads, block status and cache requests.
	ReadOnly Access = iota + 1
	// ReadWrite also allows writes, trims, zeroing and flushes.
	ReadWrite
)

func (a Access) String() string {
	switch a {
	case ReadOnly:
		return "ro"
	case ReadWrite:
		return "rw"
	}
	return fmt.Sprintf("Access(%d)", int(a))
}

// AnyIdentity as a Grant's Identity matches every client, including a
// plaintext one (which has no identity).
const AnyIdentity = "*"

// Grant gives one client identity access to one export.
type Grant struct {
	// Identity is matched against the client certificate's subject common
	// name and each of its URI subject alternative names, exactly. The
	// value AnyIdentity matches any client.
	Identity string
	// Export is the export's name.
	Export string
	// Access is ReadOnly or ReadWrite.
	Access Access
}

// Export is one named block device served.
type Export struct {
	// Name is what clients ask for. The empty name is allowed.
	Name string
	// Description is sent to clients that ask for it (NBD_INFO_DESCRIPTION)
	// and in export lists. Optional.
	Description string
	// Backend holds the data. Required.
	Backend Backend
	// ReadOnly makes the export read-only for every client, whatever its
	// grant says.
	ReadOnly bool
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN. Set it only when the
	// backend's Flush makes writes from all connections durable (true for
	// File and the store, which are shared by all connections).
	MultiConn bool
}

// ServerOptions configures a Server.
type ServerOptions struct {
	// Exports are the block devices served. Names must be unique.
	Exports []Export
	// Grants decide which client may use which export. A client sees (in
	// NBD_OPT_LIST) and may open only the exports it has a grant for.
	Grants []Grant
	// TLSConfig holds the server certificate and the CA pool client
	// certificates must chain to (ClientCAs). The server always requires
	// and verifies a client certificate. Required unless Plaintext is set.
	TLSConfig *tls.Config
	// Plaintext serves without TLS (NOTLS mode): every client is anonymous
	// and only grants with Identity AnyIdentity apply. Only for local
	// benchmarks and tests; it must be asked for explicitly. TLSConfig is
	// then ignored and STARTTLS is answered with ERR_UNSUP.
	Plaintext bool
	// QueueDepth bounds the requests in flight per connection (being
	// served or waiting for their reply to be sent). Zero means 32.
	QueueDepth int
	// MaxPayload is the largest read or write accepted, advertised as the
	// maximum block size. Zero means 32 MiB.
	MaxPayload uint32
	// HandshakeTimeout bounds the whole option haggling phase, TLS
	// included. Zero means 30 s.
	HandshakeTimeout time.Duration
	// Logger receives connection events, refusals and integrity errors.
	// Nil means slog.Default().
	Logger *slog.Logger
	// Observer, if set, is told of every request served (metrics).
	Observer Observer
}

// Stats are a server's counters since it was created.
type Stats struct {
	// Connections is the number of connections accepted.
	Connections uint64
	// Refused counts connections or options refused for TLS or
	// authorization reasons.
	Refused uint64
	// Requests is the number of transmission requests handled.
	Requests uint64
	// IntegrityErrors counts requests that failed with an error wrapping
	// ErrIntegrity.
	IntegrityErrors uint64
}

// Server serves NBD exports. Create it with NewServer; it is safe for
// concurrent use.
type Server struct {
	exports   map[string]*Export
	grants    []Grant
	tlsConfig *tls.Config
	plaintext bool
	depth     int
	maxPay    uint32
	hsTimeout time.Duration
	log       *slog.Logger
	obs       Observer

	connections, refused, requests, integrity atomic.Uint64
}

// Errors returned by NewServer.
var (
	// ErrNoTLS means neither TLSConfig nor Plaintext was given.
	ErrNoTLS = errors.New("nbd: TLSConfig required unless Plaintext is set")
	// ErrBadExport means an export is misconfigured.
	ErrBadExport = errors.New("nbd: bad export")
	// ErrBadGrant means a grant is misconfigured.
	ErrBadGrant = errors.New("nbd: bad grant")
)

const (
	defaultQueueDepth = 32
	defaultMaxPayload = 32 << 20
	preferredBlock    = 4096
)

// NewServer checks opts and returns a Server.
func NewServer(opts ServerOptions) (*Server, error) {
	s := &Server{
		exports:   make(map[string]*Export, len(opts.Exports)),
		grants:    append([]Grant(nil), opts.Grants...),
		plaintext: opts.Plaintext,
		depth:     opts.QueueDepth,
		maxPay:    opts.MaxPayload,
		hsTimeout: opts.HandshakeTimeout,
		log:       opts.Logger,
		obs:       opts.Observer,
	}
	if s.depth <= 0 {
		s.depth = defaultQueueDepth
	}
	if s.maxPay == 0 {
		s.maxPay = defaultMaxPayload
	}
	if s.maxPay < preferredBlock {
		return nil, fmt.Errorf("nbd: MaxPayload %d below %d", s.maxPay, preferredBlock)
	}
	if s.hsTimeout <= 0 {
		s.hsTimeout = 30 * time.Second
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if opts.TLSConfig == nil && !opts.Plaintext {
		return nil, ErrNoTLS
	}
	if opts.TLSConfig != nil && !opts.Plaintext {
		cfg := opts.TLSConfig.Clone()
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		if cfg.MinVersion < tls.VersionTLS12 {
			cfg.MinVersion = tls.VersionTLS12
		}
		if cfg.ClientCAs == nil {
			return nil, errors.New("nbd: TLSConfig.ClientCAs is required to verify client certificates")
		}
		if len(cfg.Certificates) == 0 && cfg.GetCertificate == nil {
			return nil, errors.New("nbd: TLSConfig has no server certificate")
		}
		s.tlsConfig = cfg
	}
	for i := range opts.Exports {
		e := opts.Exports[i]
		if e.Backend == nil {
			return nil, fmt.Errorf("%w: %q has no backend", ErrBadExport, e.Name)
		}
		if len(e.Name) > 4096 || len(e.Description) > 4096 {
			return nil, fmt.Errorf("%w: %q: name or description longer than 4096 bytes", ErrBadExport, e.Name)
		}
		if _, dup := s.exports[e.Name]; dup {
			return nil, fmt.Errorf("%w: %q defined twice", ErrBadExport, e.Name)
		}
		s.exports[e.Name] = &e
	}
	for _, g := range s.grants {
		if g.Access != ReadOnly && g.Access != ReadWrite {
			return nil, fmt.Errorf("%w: %q on %q: access must be ReadOnly or ReadWrite", ErrBadGrant, g.Identity, g.Export)
		}
		if g.Identity == "" {
			return nil, fmt.Errorf("%w: empty identity for %q", ErrBadGrant, g.Export)
		}
	}
	return s, nil
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:     s.connections.Load(),
		Refused:         s.refused.Load(),
		Requests:        s.requests.Load(),
		IntegrityErrors: s.integrity.Load(),
	}
}

// access returns the best access any of ids has to export name, or 0.
func (s *Server) access(ids []string, name string) Access {
	var best Access
	for _, g := range s.grants {
		if g.Export != name || g.Access <= best {
			continue
		}
		if g.Identity == AnyIdentity {
			best = g.Access
			continue
		}
		for _, id := range ids {
			if id == g.Identity {
				best = g.Access
				break
			}
		}
	}
	return best
}

// Serve accepts connections on l and serves them until ctx is cancelled.
// Then it stops accepting, lets every connection finish the requests it
// has in flight, flushes their exports and closes them, and returns nil.
// An accept error other than the one caused by shutdown is returned after
// the same draining.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	var err error
	for {
		nc, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("nbd: accept: %w", aerr)
				cancel()
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.ServeConn(ctx, nc)
		}()
	}
	wg.Wait()
	return err
}

// ServeConn serves one client connection until it disconnects or ctx is
// cancelled (then in-flight requests are drained first). It closes nc.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	s.connections.Add(1)
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c := newConn(s, nc)
	c.serve(ctx)
}
