// Package fleet serves the verifier's fleet web page: every enrolled
// appliance with its state (serving, refused and by which check, revoked,
// lease expired, never attested), lease, release, last attestation, store
// epoch and server identity; the recent audit trail; and the published
// releases. One server-rendered HTML page plus a page per appliance,
// html/template escaping everything read from the database, with embedded
// CSS and a Content-Security-Policy that lets the page fetch nothing.
//
// The handler does no authentication: the verifier's admin listener mounts
// it behind its mutual TLS and the viewer role, under a prefix:
//
//	mux.Handle("/fleet/", http.StripPrefix("/fleet", fleet.NewHandler(opts)))
//
// Links are relative, so any prefix works (stripped with or without its
// trailing slash).
package fleet

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
)

// Source is what the page reads; *verifier.DB satisfies it.
type Source interface {
	// Appliances lists all appliances, ordered by id.
	Appliances(ctx context.Context) ([]verifier.ApplianceInfo, error)
	// Appliance returns one appliance (an error wrapping
	// verifier.ErrNotFound when it is not enrolled).
	Appliance(ctx context.Context, id string) (*verifier.ApplianceInfo, error)
	// AuditRecords returns audit records in ascending order.
	AuditRecords(ctx context.Context, f verifier.AuditFilter) ([]verifier.AuditRecord, error)
	// Releases lists published releases, newest first.
	Releases(ctx context.Context) ([]verifier.ReleaseInfo, error)
}

// DefaultAuditLimit is how many audit records a page shows when
// Options.AuditLimit is not set.
const DefaultAuditLimit = 50

// Options configure NewHandler.
type Options struct {
	// Source is the verifier's state (required).
	Source Source
	// Now is the clock that decides whether leases are valid and from
	// which relative times are counted; nil: time.Now.
	Now func() time.Time
	// AuditLimit is how many of the newest audit records the fleet page
	// and each appliance's page show; 0 or less: DefaultAuditLimit.
	AuditLimit int
	// Logger receives the errors reading Source; nil: slog.Default().
	Logger *slog.Logger
}

// handler serves the pages.
type handler struct {
	opts Options
}

// NewHandler returns the fleet pages' handler. Paths, relative to where it
// is mounted: "/" (the fleet) and "/appliances/{id}"; GET and HEAD only,
// no query parameters.
func NewHandler(o Options) http.Handler {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AuditLimit <= 0 {
		o.AuditLimit = DefaultAuditLimit
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &handler{opts: o}
}

// contentSecurityPolicy lets the page load nothing but its own inline
// style (by hash) and the empty data: icon that stops the browser asking
// for /favicon.ico.
var contentSecurityPolicy = "default-src 'none'; style-src '" + styleHash + "'; img-src data:; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", contentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hd.Set("Allow", "GET, HEAD")
		h.fail(w, r, http.StatusMethodNotAllowed, "Only GET and HEAD are served here.")
		return
	}
	if r.URL.RawQuery != "" {
		h.fail(w, r, http.StatusBadRequest, "These pages take no query parameters.")
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/")
	switch id, ok := strings.CutPrefix(path, "appliances/"); {
	case path == "":
		h.render(w, r, "fleet", h.fleet)
	case ok && protocol.ValidID(id):
		h.render(w, r, "appliance", func(ctx context.Context, now time.Time) (any, error) {
			return h.appliance(ctx, now, id)
		})
	default:
		h.fail(w, r, http.StatusNotFound, "No such page.")
	}
}

// render executes page with what load returns, into a buffer first so a
// failure is a clean error page.
func (h *handler) render(w http.ResponseWriter, r *http.Request, page string, load func(context.Context, time.Time) (any, error)) {
	now := h.opts.Now().UTC()
	data, err := load(r.Context(), now)
	switch {
	case errors.Is(err, verifier.ErrNotFound):
		h.fail(w, r, http.StatusNotFound, "No such appliance.")
		return
	case err != nil:
		h.opts.Logger.Error("fleet: reading the verifier's state", "path", r.URL.Path, "err", err)
		h.fail(w, r, http.StatusInternalServerError, "The verifier's state could not be read; the error is in the verifier's log.")
		return
	}
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, page, data); err != nil {
		h.opts.Logger.Error("fleet: rendering", "page", page, "err", err)
		h.fail(w, r, http.StatusInternalServerError, "The page could not be rendered; the error is in the verifier's log.")
		return
	}
	write(w, r, http.StatusOK, buf.Bytes())
}

// fail writes a small HTML error page, linking back to the fleet page.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	home := strings.Repeat("../", strings.Count(strings.TrimPrefix(r.URL.Path, "/"), "/"))
	if home == "" {
		home = "./"
	}
	var buf bytes.Buffer
	e := errorPage{page: h.newPage(http.StatusText(status), home, h.opts.Now().UTC()), Status: status, Message: msg}
	if err := pages.ExecuteTemplate(&buf, "error", e); err != nil {
		h.opts.Logger.Error("fleet: rendering the error page", "err", err)
		http.Error(w, msg, status)
		return
	}
	write(w, r, status, buf.Bytes())
}

// write sends an HTML page (its headers only, for HEAD).
func write(w http.ResponseWriter, r *http.Request, status int, page []byte) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(page)
	}
}
