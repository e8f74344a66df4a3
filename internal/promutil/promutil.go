// Package promutil holds what Embassy's two Prometheus exporters, the
// verifier (attest/verifier) and the appliance (appliance/metrics), share:
// a registry with the Go runtime, process and build information
// collectors, and the handler serving it. docs/metrics.md lists every
// metric.
package promutil

import (
	"net/http"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry holding the Go runtime (go_*) and process
// (process_*) collectors and the gauge embassy_<component>_build_info,
// always 1, labelled with the binary's module version, VCS revision and Go
// version.
func NewRegistry(component string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	version, revision, goVersion := buildInfo()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "embassy_" + component + "_build_info",
		Help:        "Always 1; the labels describe the running binary.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	})
	info.Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), info)
	return reg
}

// buildInfo reads the binary's build information ("unknown" where absent).
func buildInfo() (version, revision, goVersion string) {
	version, revision, goVersion = "unknown", "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	goVersion = bi.GoVersion
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
		}
	}
	return
}

// Handler serves reg in the Prometheus text exposition format (or
// OpenMetrics, when the scraper asks for it). A collector's error is
// logged by the scraper as a partial scrape, not answered with a 500, so
// the other metrics still arrive.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, EnableOpenMetrics: true})
}
