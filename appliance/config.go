package appliance

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// ConfigVersion is the configuration format version this package reads.
const ConfigVersion = 1

// DefaultHeaderSize is the size of the data disk's header region, which holds
// the TPM-sealed local key share; the store lives after it.
const DefaultHeaderSize = 1 << 20

// ErrConfig reports an invalid appliance configuration.
var ErrConfig = errors.New("appliance: invalid configuration")

// Config is the appliance configuration, a JSON document baked into the
// initramfs (and so measured by the firmware into PCR 9 and by the appliance
// into its own PCR). docs/appliance.md documents every field.
type Config struct {
	// Version must be ConfigVersion.
	Version int `json:"version"`
	// Identity names this appliance to the verifier and in logs.
	Identity string `json:"identity"`
	// Verifiers are the n independent verifiers the appliance attests to;
	// each holds one share of the remote key secret. 1..MaxVerifiers, names
	// unique.
	Verifiers []VerifierConfig `json:"verifiers,omitempty"`
	// Threshold is k: how many verifiers must grant their shares for the
	// appliance to unlock, and keep valid leases for it to go on serving.
	// 1 <= k <= n; it may be left out (and is then 1) only with one
	// verifier.
	Threshold int `json:"threshold,omitempty"`
	// LegacyVerifier is the single "verifier" object of configurations
	// written before threshold key grants. It is input only: ParseConfig
	// turns it into the one-element Verifiers list (named
	// LegacyVerifierName) and clears it. Giving it with "verifiers" is an
	// error.
	LegacyVerifier *VerifierConfig `json:"verifier,omitempty"`
	// NBD configures the block export.
	NBD NBDConfig `json:"nbd"`
	// Network configures the appliance's network interface.
	Network NetworkConfig `json:"network"`
	// Disk locates the data disk.
	Disk DiskConfig `json:"disk"`
	// Retry bounds the backoff between attempts after a refusal or an
	// unreachable verifier.
	Retry RetryConfig `json:"retry"`
	// Metrics, if given, serves Prometheus metrics over mutual TLS
	// (docs/metrics.md). Absent: no metrics listener.
	Metrics *MetricsConfig `json:"metrics,omitempty"`
}

// MaxVerifiers is the most verifiers a configuration may list (n).
const MaxVerifiers = 16

// LegacyVerifierName names the verifier given by the legacy single
// "verifier" object.
const LegacyVerifierName = "verifier"

// verifierNameRE is the verifier name rule: lower-case letters, digits,
// '.', '_' and '-', starting with a letter or digit; names show up in logs
// and error texts, so they stay plain.
var verifierNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// VerifierConfig locates one verifier.
type VerifierConfig struct {
	// Name names the verifier in logs, answers and errors ("tallinn").
	// Unique in the configuration; [a-z0-9._-], at most 63 characters.
	Name string `json:"name"`
	// URL is the verifier's base URL (https, or http for loopback tests).
	URL string `json:"url"`
	// CAPEM is the PEM certificate(s) the verifier's TLS certificate must
	// chain to.
	CAPEM string `json:"ca_pem"`
}

// NBDConfig configures the NBD server.
type NBDConfig struct {
	// Listen is the TCP address to serve on (default ":10809").
	Listen string `json:"listen"`
	// ClientCAPEM is the PEM certificate(s) client certificates must chain to.
	ClientCAPEM string `json:"client_ca_pem"`
	// Exports are the exports served; each is the whole store (read-write or
	// read-only per grant). At least one.
	Exports []ExportConfig `json:"exports"`
}

// ExportConfig is one NBD export.
type ExportConfig struct {
	// Name is the export name clients ask for.
	Name string `json:"name"`
	// Grants list the client identities (certificate CN or URI SAN) allowed
	// to use the export.
	Grants []GrantConfig `json:"grants"`
}

// GrantConfig gives one client identity access to an export.
type GrantConfig struct {
	// Identity is the client certificate's CN or a URI SAN.
	Identity string `json:"identity"`
	// Access is "rw" or "ro".
	Access string `json:"access"`
}

// MetricsConfig configures the Prometheus metrics listener: HTTPS with the
// NBD server identity as its certificate, serving /metrics only to clients
// whose certificate chains to ClientCAPEM.
type MetricsConfig struct {
	// Listen is the TCP address to serve on, on the management network
	// ("10.0.9.15:9464"). Required; it must differ from nbd.listen.
	Listen string `json:"listen"`
	// ClientCAPEM is the PEM certificate(s) scrapers' client certificates
	// must chain to. Required.
	ClientCAPEM string `json:"client_ca_pem"`
}

// NetworkConfig configures the network interface.
type NetworkConfig struct {
	// Interface is the interface name (default "eth0").
	Interface string `json:"interface"`
	// Mode is "dhcp" or "static".
	Mode string `json:"mode"`
	// Address is the static address in CIDR form (static mode).
	Address string `json:"address,omitempty"`
	// Gateway is the static default gateway (static mode, optional).
	Gateway string `json:"gateway,omitempty"`
}

// DiskConfig locates the data disk.
type DiskConfig struct {
	// Device is the data disk's block device (default "/dev/vda").
	Device string `json:"device"`
	// HeaderSize is the size of the header region before the store
	// (default DefaultHeaderSize; a multiple of 4096).
	HeaderSize int64 `json:"header_size"`
}

// RetryConfig bounds the retry backoff.
type RetryConfig struct {
	// Initial is the first delay (default "2s").
	Initial Duration `json:"initial"`
	// Max is the longest delay (default "60s").
	Max Duration `json:"max"`
}

// Duration is a time.Duration written as a Go duration string ("2s").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"2s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ParseConfig reads and validates a configuration, filling in defaults.
// Unknown fields are rejected: a typo must not silently change behaviour.
func ParseConfig(data []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrConfig)
	}
	if err := c.normalize(); err != nil {
		return nil, err
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// normalize turns the legacy single verifier into the one-element
// Verifiers list, so that all other code reads only Verifiers.
func (c *Config) normalize() error {
	if c.LegacyVerifier == nil {
		return nil
	}
	if len(c.Verifiers) > 0 {
		return fmt.Errorf("%w: both verifier and verifiers given; use verifiers only", ErrConfig)
	}
	v := *c.LegacyVerifier
	if v.Name == "" {
		v.Name = LegacyVerifierName
	}
	c.Verifiers = []VerifierConfig{v}
	c.LegacyVerifier = nil
	return nil
}

func (c *Config) setDefaults() {
	// With one verifier k can only be 1; with more, leaving k out would
	// silently choose between "any one verifier" and "all of them".
	if c.Threshold == 0 && len(c.Verifiers) == 1 {
		c.Threshold = 1
	}
	if c.NBD.Listen == "" {
		c.NBD.Listen = ":10809"
	}
	if c.Network.Interface == "" {
		c.Network.Interface = "eth0"
	}
	if c.Disk.Device == "" {
		c.Disk.Device = "/dev/vda"
	}
	if c.Disk.HeaderSize == 0 {
		c.Disk.HeaderSize = DefaultHeaderSize
	}
	if c.Retry.Initial == 0 {
		c.Retry.Initial = Duration(2 * time.Second)
	}
	if c.Retry.Max == 0 {
		c.Retry.Max = Duration(60 * time.Second)
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	if c.Version != ConfigVersion {
		return bad("version %d, want %d", c.Version, ConfigVersion)
	}
	if strings.TrimSpace(c.Identity) == "" {
		return bad("identity is empty")
	}
	if err := c.validateVerifiers(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.NBD.Listen); err != nil {
		return bad("nbd.listen %q: %v", c.NBD.Listen, err)
	}
	if _, err := ParseCertPool(c.NBD.ClientCAPEM); err != nil {
		return bad("nbd.client_ca_pem: %v", err)
	}
	if len(c.NBD.Exports) == 0 {
		return bad("nbd.exports is empty")
	}
	if m := c.Metrics; m != nil {
		if _, port, err := net.SplitHostPort(m.Listen); err != nil || port == "" {
			return bad("metrics.listen %q: want host:port", m.Listen)
		}
		if m.Listen == c.NBD.Listen {
			return bad("metrics.listen %q is nbd.listen too", m.Listen)
		}
		if _, err := ParseCertPool(m.ClientCAPEM); err != nil {
			return bad("metrics.client_ca_pem: %v", err)
		}
	}
	names := map[string]bool{}
	for _, e := range c.NBD.Exports {
		if names[e.Name] {
			return bad("export %q listed twice", e.Name)
		}
		names[e.Name] = true
		if len(e.Grants) == 0 {
			return bad("export %q has no grants", e.Name)
		}
		for _, g := range e.Grants {
			if g.Identity == "" {
				return bad("export %q: grant with empty identity", e.Name)
			}
			if g.Access != "rw" && g.Access != "ro" {
				return bad("export %q: access %q, want rw or ro", e.Name, g.Access)
			}
		}
	}
	switch c.Network.Mode {
	case "dhcp":
	case "static":
		if _, err := netip.ParsePrefix(c.Network.Address); err != nil {
			return bad("network.address %q: %v", c.Network.Address, err)
		}
		if c.Network.Gateway != "" {
			if _, err := netip.ParseAddr(c.Network.Gateway); err != nil {
				return bad("network.gateway %q: %v", c.Network.Gateway, err)
			}
		}
	default:
		return bad("network.mode %q, want dhcp or static", c.Network.Mode)
	}
	if !strings.HasPrefix(c.Disk.Device, "/dev/") {
		return bad("disk.device %q is not under /dev", c.Disk.Device)
	}
	if c.Disk.HeaderSize < 4096 || c.Disk.HeaderSize%4096 != 0 {
		return bad("disk.header_size %d must be a positive multiple of 4096", c.Disk.HeaderSize)
	}
	if c.Retry.Initial <= 0 || c.Retry.Max < c.Retry.Initial {
		return bad("retry: need 0 < initial <= max")
	}
	return nil
}

// validateVerifiers checks the verifier list and the threshold.
func (c *Config) validateVerifiers() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	if c.LegacyVerifier != nil {
		if len(c.Verifiers) > 0 {
			return bad("both verifier and verifiers given; use verifiers only")
		}
		return bad("verifier (legacy) is not normalised into verifiers; read configurations with ParseConfig")
	}
	n := len(c.Verifiers)
	if n == 0 {
		return bad("verifiers is empty")
	}
	if n > MaxVerifiers {
		return bad("%d verifiers, at most %d", n, MaxVerifiers)
	}
	names := map[string]bool{}
	for i, v := range c.Verifiers {
		if v.Name == "" {
			return bad("verifiers[%d].name is empty", i)
		}
		if !verifierNameRE.MatchString(v.Name) {
			return bad("verifiers[%d].name %q: want 1..63 of [a-z0-9._-], starting with a letter or digit", i, v.Name)
		}
		if names[v.Name] {
			return bad("verifier name %q listed twice", v.Name)
		}
		names[v.Name] = true
		u, err := url.Parse(v.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return bad("verifier %q: verifier.url %q is not an http(s) URL", v.Name, v.URL)
		}
		if u.Scheme == "https" {
			if _, err := ParseCertPool(v.CAPEM); err != nil {
				return bad("verifier %q: verifier.ca_pem: %v", v.Name, err)
			}
		}
	}
	if c.Threshold == 0 {
		return bad("threshold is required with %d verifiers (1..%d)", n, n)
	}
	if c.Threshold < 1 || c.Threshold > n {
		return bad("threshold %d, want 1..%d (the number of verifiers)", c.Threshold, n)
	}
	return nil
}

// ParseCertPool parses one or more PEM certificates into a pool.
func ParseCertPool(pemData string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	rest := []byte(pemData)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return pool, nil
}
