package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/admin"
	"github.com/dataembassy/embassy/attest/fleet"
	"github.com/dataembassy/embassy/qemu"
)

// operatorView is what an operator in Tallinn sees of the running
// appliance through the verifier's admin API (mutual TLS, an operator
// certificate with the viewer role): the fleet as the admin API lists it,
// the fleet page, and the verifier's attestation counters.
func operatorView(ctx context.Context, v *qemu.Verifier, applianceID string) error {
	leaf, err := v.Operators.Issue(admin.IssueOptions("demo-operator", []admin.Role{admin.Viewer}, time.Hour))
	if err != nil {
		return err
	}
	c, err := admin.NewClient(v.AdminURL, leaf.TLSCertificate(), v.ServerCAs)
	if err != nil {
		return err
	}
	defer c.Close()
	list, err := c.Appliances(ctx)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	step("operator %q (role viewer) over the admin API at %s:", "demo-operator", v.AdminURL)
	for i := range list {
		a := &list[i]
		st := fleet.StateOf(a, time.Now())
		step("  %s: %s, release %s, store epoch %d, lease %s left", a.ID, st.State.Label(), a.Release, a.LastEpoch, st.LeaseLeft.Round(time.Second))
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: v.ServerCAs, Certificates: []tls.Certificate{leaf.TLSCertificate()}}}}
	defer hc.CloseIdleConnections()
	get := func(path string) (string, error) {
		resp, err := hc.Get(v.AdminURL + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return string(b), err
	}
	page, err := get("/fleet/")
	if err != nil {
		return err
	}
	if !strings.Contains(page, applianceID) {
		return fmt.Errorf("the fleet page does not list %s", applianceID)
	}
	step("  fleet page %s/fleet/: %d bytes of HTML listing %s", v.AdminURL, len(page), applianceID)
	metrics, err := get("/metrics")
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(strings.NewReader(metrics))
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "embassy_verifier_attestations_total") && !strings.HasSuffix(l, " 0") {
			step("  metrics: %s", l)
		}
	}
	return sc.Err()
}
