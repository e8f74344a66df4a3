package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// printJSON writes v as indented JSON: the --json output of every command.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a tab-aligned table writer with header (tab-separated
// column names) written; the caller flushes it.
func newTable(w io.Writer, header string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header != "" {
		fmt.Fprintln(tw, header)
	}
	return tw
}

// printRows prints list as a JSON array (never null) when asJSON is set,
// and otherwise as a table under header with one row per item.
func printRows[T any](w io.Writer, asJSON bool, list []T, header string, row func(io.Writer, T)) error {
	if asJSON {
		if list == nil {
			list = []T{}
		}
		return printJSON(w, list)
	}
	tw := newTable(w, header)
	for _, x := range list {
		row(tw, x)
	}
	return tw.Flush()
}

// fmtTime formats an optional time for a table: "-" when unset.
func fmtTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// orDash is s, or "-" when s is empty, for table cells.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// human formats a byte count with a binary unit.
func human(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.4g %s", f, units[i])
}
