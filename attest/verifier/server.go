package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
)

// Options configures a Server.
type Options struct {
	// DB is the verifier's state. Required.
	DB *DB
	// Lease is how long a granted or renewed appliance may run before it
	// must re-attest. Default 10 minutes.
	Lease time.Duration
	// NonceTTL is how long a nonce stays valid. Default 60 seconds.
	NonceTTL time.Duration
	// EnrollTTL is how long a credential-activation challenge stays valid.
	// Default 5 minutes.
	EnrollTTL time.Duration
	// PolicyRefresh bounds how long a published or withdrawn release takes
	// to be seen by the server. Default 2 seconds.
	PolicyRefresh time.Duration
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
	// Metrics, if set, count the attestations decided and read the
	// per-appliance gauges from DB (nil: no metrics).
	Metrics *Metrics
}

// Server is the appliance-facing API. It implements http.Handler.
type Server struct {
	db   *DB
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux

	polMu     sync.Mutex
	pol       []policyRelease
	polLoaded time.Time
}

// NewServer returns a Server.
func NewServer(opts Options) (*Server, error) {
	if opts.DB == nil {
		return nil, errors.New("verifier: Options.DB is required")
	}
	if opts.Lease <= 0 {
		opts.Lease = 10 * time.Minute
	}
	if opts.NonceTTL <= 0 {
		opts.NonceTTL = time.Minute
	}
	if opts.EnrollTTL <= 0 {
		opts.EnrollTTL = 5 * time.Minute
	}
	if opts.PolicyRefresh <= 0 {
		opts.PolicyRefresh = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{db: opts.DB, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if opts.Metrics != nil {
		opts.Metrics.bind(opts.DB, opts.Logger)
	}
	s.mux.HandleFunc("POST "+protocol.PathEnrollChallenge, handle(s, s.enrollChallenge))
	s.mux.HandleFunc("POST "+protocol.PathEnrollActivate, handle(s, s.enrollActivate))
	s.mux.HandleFunc("POST "+protocol.PathNonce, handle(s, s.nonce))
	s.mux.HandleFunc("POST "+protocol.PathAttest, handle(s, s.attest))
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// handle adapts a typed endpoint: it decodes the request strictly, and
// answers a Refusal with its status and body, any other error with a bare
// 500 (the details go to the log, not to the appliance).
func handle[Req any, Resp any](s *Server, f func(context.Context, *Req) (*Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := protocol.Decode(r.Body, &req); err != nil {
			writeJSON(w, http.StatusBadRequest, badRequest(err).ErrorResponse)
			return
		}
		resp, err := f(r.Context(), &req)
		if err != nil {
			var ref *Refusal
			if errors.As(err, &ref) {
				writeJSON(w, ref.Status, ref.ErrorResponse)
				return
			}
			s.log.Error("verifier: internal error", "path", r.URL.Path, "err", err)
			writeJSON(w, http.StatusInternalServerError, protocol.ErrorResponse{Code: protocol.CodeInternal, Detail: "internal error"})
			return
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// loadAppliance loads an appliance's record, refusing an unknown one.
func (s *Server) loadAppliance(ctx context.Context, id string) (*appliance, error) {
	a, err := s.db.applianceRecord(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, notEnrolled(id)
	}
	return a, err
}

// loadActive loads an appliance and refuses a revoked one.
func (s *Server) loadActive(ctx context.Context, id string) (*appliance, error) {
	a, err := s.loadAppliance(ctx, id)
	if err != nil {
		return nil, err
	}
	if a.revoked {
		return nil, revoked(a.id)
	}
	return a, nil
}
