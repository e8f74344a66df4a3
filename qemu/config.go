package qemu

import (
	"encoding/json"
	"time"
)

// Endpoint is one verifier as an appliance configuration names it.
type Endpoint struct {
	// Name identifies the verifier in the appliance's logs ("tallinn").
	Name string
	// URL is the verifier's URL from inside the guest.
	URL string
	// CAPEM is the CA the appliance pins for this verifier.
	CAPEM string
}

// ConfigOptions describe an appliance configuration for the harness.
type ConfigOptions struct {
	Identity string
	// VerifierURL and VerifierCAPEM name one verifier (the configuration's
	// single "verifier" object). Ignored when Verifiers is set.
	VerifierURL   string
	VerifierCAPEM string
	// Verifiers and Threshold configure k-of-n key grants: the
	// configuration's "verifiers" list and "threshold" (0: omitted, the
	// appliance's default).
	Verifiers []Endpoint
	Threshold int
	// ClientCAPEM and ClientIdentity grant one client read-write access to
	// the export "registers".
	ClientCAPEM    string
	ClientIdentity string
	// RetryMax bounds the appliance's retry backoff (default 4s).
	RetryMax time.Duration
	// DiskDevice is the data disk's block device (disk.device; default
	// the appliance's, /dev/vda). Booting a disk image, name the image's
	// store partition, e.g. StorePartition.
	DiskDevice string
	// MetricsListen and MetricsClientCAPEM, if MetricsListen is set, give
	// the configuration a "metrics" section: the Prometheus listener on
	// that address inside the guest (e.g. ":9464"; forward the port to
	// reach it), open to scrapers whose client certificate chains to
	// MetricsClientCAPEM.
	MetricsListen      string
	MetricsClientCAPEM string
}

// StorePartition names the disk image's store partition (images/disk,
// GPT name "embassy-store") the way udev would; the appliance resolves
// it through sysfs (no udev in the initramfs), so it does not depend on
// the boot disk being /dev/vda.
const StorePartition = "/dev/disk/by-partlabel/embassy-store"

// ApplianceConfig returns a configuration for QEMU's user network.
func ApplianceConfig(o ConfigOptions) ([]byte, error) {
	if o.RetryMax == 0 {
		o.RetryMax = 4 * time.Second
	}
	cfg := map[string]any{
		"version":  1,
		"identity": o.Identity,
		"nbd": map[string]any{"client_ca_pem": o.ClientCAPEM, "exports": []any{
			map[string]any{"name": "registers", "grants": []any{map[string]any{"identity": o.ClientIdentity, "access": "rw"}}},
		}},
		"network": map[string]any{"mode": "static", "address": "10.0.2.15/24", "gateway": GuestHost},
		"retry":   map[string]any{"initial": "1s", "max": o.RetryMax.String()},
	}
	if len(o.Verifiers) > 0 {
		var list []any
		for _, e := range o.Verifiers {
			list = append(list, map[string]any{"name": e.Name, "url": e.URL, "ca_pem": e.CAPEM})
		}
		cfg["verifiers"] = list
		if o.Threshold > 0 {
			cfg["threshold"] = o.Threshold
		}
	} else {
		cfg["verifier"] = map[string]any{"url": o.VerifierURL, "ca_pem": o.VerifierCAPEM}
	}
	if o.MetricsListen != "" {
		cfg["metrics"] = map[string]any{"listen": o.MetricsListen, "client_ca_pem": o.MetricsClientCAPEM}
	}
	if o.DiskDevice != "" {
		cfg["disk"] = map[string]any{"device": o.DiskDevice}
	}
	return json.MarshalIndent(cfg, "", "  ")
}
