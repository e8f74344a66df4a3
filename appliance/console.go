package appliance

import (
	"encoding/hex"
	"io"
	"log/slog"
	"sort"
)

// reportPCRs prints the PCRs operators compare with a release.
func (a *Appliance) reportPCRs(when string) {
	if a.o.PCRs == nil || len(a.o.ReportPCRs) == 0 {
		return
	}
	vals, err := a.o.PCRs.ReadPCRs(a.o.ReportPCRs)
	if err != nil {
		a.log.Warn("reading PCRs", "err", err)
		return
	}
	idx := make([]int, 0, len(vals))
	for i := range vals {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		a.log.Info("pcr", "when", when, "index", i, "sha256", hex.EncodeToString(vals[i]))
	}
}

// ConsoleLogger returns the appliance's console logger: slog's text handler
// on w (the serial console), with times.
func ConsoleLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
