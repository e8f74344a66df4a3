package qemu

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// ErrNoRelease reports a release name no verifier of a cluster has
// published (or all have withdrawn).
var ErrNoRelease = errors.New("qemu: no such release")

// ClusterOptions configure StartCluster.
type ClusterOptions struct {
	// Binary is the embassy-verifier binary (BuildVerifier). Required.
	Binary string
	// Dir holds one subdirectory per verifier. Required.
	Dir string
	// Names name the verifiers, one process each (1..keys.MaxShares).
	Names []string
	// Threshold is k: how many verifiers must grant for the appliance to
	// get its key (1 <= k <= len(Names)).
	Threshold int
	// Lease is the lease every verifier grants.
	Lease time.Duration
}

// Cluster is n verifier processes that grant an appliance its key k of n:
// one enrolment ceremony deals one share to each (EnrollThreshold), every
// release is published to each, and the appliance configuration names all
// of them and k.
type Cluster struct {
	// Verifiers are the processes, in the order of ClusterOptions.Names.
	Verifiers []*VerifierProcess
	// Threshold is k.
	Threshold int
}

// StartCluster starts one verifier process per name, each with its own
// database, TLS certificate and port.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if len(o.Names) == 0 || o.Threshold < 1 || o.Threshold > len(o.Names) {
		return nil, fmt.Errorf("qemu: cluster of %d verifiers with threshold %d", len(o.Names), o.Threshold)
	}
	c := &Cluster{Threshold: o.Threshold}
	for _, name := range o.Names {
		p, err := StartVerifierProcess(ctx, ProcessOptions{Binary: o.Binary, Dir: filepath.Join(o.Dir, name), Name: name, Lease: o.Lease})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("qemu: verifier %s: %w", name, err)
		}
		c.Verifiers = append(c.Verifiers, p)
	}
	return c, nil
}

// Endpoints returns the verifiers as the appliance configuration names
// them (ConfigOptions.Verifiers).
func (c *Cluster) Endpoints() []Endpoint {
	out := make([]Endpoint, len(c.Verifiers))
	for i, v := range c.Verifiers {
		out[i] = Endpoint{Name: v.Name, URL: v.GuestURL, CAPEM: v.CAPEM}
	}
	return out
}

// Verifier returns the process called name, or nil.
func (c *Cluster) Verifier(name string) *VerifierProcess {
	for _, v := range c.Verifiers {
		if v.Name == name {
			return v
		}
	}
	return nil
}

// Publish signs release name (expecting pcrs) with each verifier's
// harness key and publishes it to every verifier.
func (c *Cluster) Publish(ctx context.Context, name string, initrd []byte, pcrs map[int][]byte) error {
	return c.each(func(v *VerifierProcess) error { return v.Publish(ctx, name, initrd, pcrs) })
}

// Withdraw withdraws release name (as Publish named it) at every verifier
// that has it published; ErrNoRelease when none has.
func (c *Cluster) Withdraw(ctx context.Context, name string) error {
	n := 0
	err := c.each(func(v *VerifierProcess) error {
		rels, err := v.DB.Releases(ctx)
		if err != nil {
			return err
		}
		for _, r := range rels {
			if r.Release == name && r.Withdrawn == nil {
				if err := v.DB.WithdrawRelease(ctx, r.Digest, "harness"); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	if err == nil && n == 0 {
		return fmt.Errorf("%w: %q", ErrNoRelease, name)
	}
	return err
}

// each runs f on every verifier and joins the errors, each naming its
// verifier.
func (c *Cluster) each(f func(v *VerifierProcess) error) error {
	var errs []error
	for _, v := range c.Verifiers {
		if err := f(v); err != nil {
			errs = append(errs, fmt.Errorf("verifier %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Running names the verifiers whose process is up.
func (c *Cluster) Running() []string {
	var names []string
	for _, v := range c.Verifiers {
		if v.Running() {
			names = append(names, v.Name)
		}
	}
	return names
}

// String lists the verifiers and k, for logs.
func (c *Cluster) String() string {
	names := make([]string, len(c.Verifiers))
	for i, v := range c.Verifiers {
		names[i] = v.Name
	}
	return fmt.Sprintf("%d of %d (%s)", c.Threshold, len(c.Verifiers), strings.Join(names, ", "))
}

// Close stops every verifier process.
func (c *Cluster) Close() {
	for _, v := range c.Verifiers {
		v.Close()
	}
}
