package fleet

import (
	"cmp"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/verifier"
)

//go:embed templates/*.html templates/style.css
var files embed.FS

// style is the pages' CSS, inlined in a <style> element that the
// Content-Security-Policy admits by its hash (styleHash).
var style = template.CSS(must(files.ReadFile("templates/style.css")))

var styleHash = func() string {
	sum := sha256.Sum256([]byte(style))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}()

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"at":    at,
	"short": short,
	"bad":   func(outcome string) bool { return outcome != "ok" },
}).ParseFS(files, "templates/*.html"))

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// page is what every page's layout reads.
type page struct {
	Title string
	// Home is the relative link to the fleet page.
	Home  string
	Now   time.Time
	Style template.CSS
}

// fleetPage is the fleet page's data.
type fleetPage struct {
	page
	Appliances []applianceRow
	// Counts is how many appliances are in each state, in states order.
	Counts   []stateCount
	Audit    auditTable
	Releases []verifier.ReleaseInfo
}

// appliancePage is one appliance's page.
type appliancePage struct {
	page
	applianceRow
	// PCRs are the baseline's PCR indices, sorted.
	PCRs  []string
	Audit auditTable
}

// auditTable is a table of audit records, newest first.
type auditTable struct {
	Caption string
	Now     time.Time
	Records []verifier.AuditRecord
}

// applianceRow is an appliance and its derived status at now.
type applianceRow struct {
	*verifier.ApplianceInfo
	Status Status
	now    time.Time
}

func newRow(a *verifier.ApplianceInfo, now time.Time) applianceRow {
	return applianceRow{a, StateOf(a, now), now}
}

// leaseView is the lease column.
type leaseView struct {
	Serving bool
	// Ended is true when the lease's end has passed.
	Ended bool
	Until *stamp
	// Left is the seconds the lease still runs.
	Left int64
}

// Lease is the row's lease column.
func (r applianceRow) Lease() (leaseView, error) {
	until, err := at(r.now, r.LeaseUntil)
	v := leaseView{Serving: r.Status.State == Serving, Until: until, Left: int64(r.Status.LeaseLeft / time.Second)}
	v.Ended = r.LeaseUntil != nil && !r.now.Before(*r.LeaseUntil)
	return v, err
}

// identityView is the server identity column.
type identityView struct {
	SHA256, Release string
	Recorded        *stamp
}

// Identity is the row's server identity column.
func (r applianceRow) Identity() (identityView, error) {
	rec, err := at(r.now, r.ServerCertRecorded)
	return identityView{SHA256: r.ServerCertSHA256, Release: r.ServerCertRelease, Recorded: rec}, err
}

type stateCount struct {
	State State
	N     int
}

// states is the order of the summary.
var states = []State{Refused, Revoked, LeaseExpired, NeverAttested, Serving}

// errorPage is an error's page; its Title is the status text.
type errorPage struct {
	page
	Status  int
	Message string
}

func (h *handler) newPage(title, home string, now time.Time) page {
	return page{Title: title, Home: home, Now: now, Style: style}
}

// fleet loads the fleet page.
func (h *handler) fleet(ctx context.Context, now time.Time) (any, error) {
	apps, err := h.opts.Source.Appliances(ctx)
	if err != nil {
		return nil, err
	}
	p := &fleetPage{page: h.newPage("Embassy fleet", "./", now)}
	n := map[State]int{}
	for i := range apps {
		row := newRow(&apps[i], now)
		n[row.Status.State]++
		p.Appliances = append(p.Appliances, row)
	}
	for _, s := range states {
		p.Counts = append(p.Counts, stateCount{s, n[s]})
	}
	if p.Audit, err = h.audit(ctx, now, "", "The newest records of the hash-chained audit log, newest first."); err != nil {
		return nil, err
	}
	if p.Releases, err = h.opts.Source.Releases(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// appliance loads appliance id's page.
func (h *handler) appliance(ctx context.Context, now time.Time, id string) (any, error) {
	a, err := h.opts.Source.Appliance(ctx, id)
	if err != nil {
		return nil, err
	}
	p := &appliancePage{page: h.newPage("Appliance "+a.ID, "../", now), applianceRow: newRow(a, now)}
	for k := range a.Baseline {
		p.PCRs = append(p.PCRs, k)
	}
	// Numeric order: the keys are decimal PCR indices.
	slices.SortFunc(p.PCRs, func(x, y string) int { return cmp.Or(len(x)-len(y), strings.Compare(x, y)) })
	if p.Audit, err = h.audit(ctx, now, id, "This appliance's newest audit records, newest first."); err != nil {
		return nil, err
	}
	return p, nil
}

// audit returns the newest audit records (of appliance, if set), newest
// first.
func (h *handler) audit(ctx context.Context, now time.Time, appliance, caption string) (auditTable, error) {
	recs, err := h.opts.Source.AuditRecords(ctx, verifier.AuditFilter{Appliance: appliance, Limit: h.opts.AuditLimit})
	slices.Reverse(recs)
	return auditTable{Caption: caption, Now: now, Records: recs}, err
}

// stamp is a time as the pages print it: UTC ISO 8601 and relative to
// the page's time.
type stamp struct {
	ISO string
	Rel string
}

// at formats t (a time.Time, or a *time.Time where nil is none)
// relative to now; nil for none.
func at(now time.Time, t any) (*stamp, error) {
	var v time.Time
	switch t := t.(type) {
	case time.Time:
		v = t
	case *time.Time:
		if t == nil {
			return nil, nil
		}
		v = *t
	default:
		return nil, fmt.Errorf("fleet: at: %T is not a time", t)
	}
	return &stamp{ISO: v.UTC().Format(time.RFC3339), Rel: relative(v.Sub(now))}, nil
}

// relative says d from now in words: "in 5 min", "3 h ago".
func relative(d time.Duration) string {
	past := d < 0
	if past {
		d = -d
	}
	var s string
	switch {
	case d < time.Second:
		return "now"
	case d < 100*time.Second:
		s = fmt.Sprintf("%d s", d/time.Second)
	case d < 100*time.Minute:
		s = fmt.Sprintf("%d min", d/time.Minute)
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", d/time.Hour)
	default:
		s = fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	if past {
		return s + " ago"
	}
	return "in " + s
}

// short is the first 16 characters of a hex digest.
func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}
