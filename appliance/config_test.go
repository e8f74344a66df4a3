package appliance_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/internal/pki"
)

func testCAPEM(t testing.TB) string {
	t.Helper()
	ca, err := pki.NewCA("test ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return string(ca.CertPEM())
}

func validConfig(t testing.TB) map[string]any {
	ca := testCAPEM(t)
	return map[string]any{
		"version":  1,
		"identity": "lux-01",
		"verifier": map[string]any{"url": "https://10.0.2.2:8443", "ca_pem": ca},
		"nbd": map[string]any{
			"client_ca_pem": ca,
			"exports":       []any{map[string]any{"name": "registers", "grants": []any{map[string]any{"identity": "tallinn-client", "access": "rw"}}}},
		},
		"network": map[string]any{"mode": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2"},
	}
}

func marshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := appliance.ParseConfig(marshal(t, validConfig(t)))
	if err != nil {
		t.Fatal(err)
	}
	if c.NBD.Listen != ":10809" || c.Disk.Device != "/dev/vda" || c.Disk.HeaderSize != appliance.DefaultHeaderSize ||
		c.Network.Interface != "eth0" || time.Duration(c.Retry.Initial) != 2*time.Second {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestParseConfigMetrics(t *testing.T) {
	c, err := appliance.ParseConfig(marshal(t, validConfig(t)))
	if err != nil || c.Metrics != nil {
		t.Fatalf("without a metrics section: %+v, %v; want no metrics", c.Metrics, err)
	}
	m := validConfig(t)
	ca := testCAPEM(t)
	m["metrics"] = map[string]any{"listen": "10.0.9.15:9464", "client_ca_pem": ca}
	if c, err = appliance.ParseConfig(marshal(t, m)); err != nil {
		t.Fatal(err)
	}
	if c.Metrics == nil || c.Metrics.Listen != "10.0.9.15:9464" || c.Metrics.ClientCAPEM != ca {
		t.Fatalf("metrics section read as %+v", c.Metrics)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(m map[string]any)
		want   string
	}{
		{"version", func(m map[string]any) { m["version"] = 2 }, "version"},
		{"identity", func(m map[string]any) { m["identity"] = " " }, "identity"},
		{"unknown field", func(m map[string]any) { m["extra"] = true }, "unknown field"},
		{"verifier url", func(m map[string]any) { m["verifier"].(map[string]any)["url"] = "ftp://x" }, "verifier.url"},
		{"verifier ca", func(m map[string]any) { m["verifier"].(map[string]any)["ca_pem"] = "junk" }, "verifier.ca_pem"},
		{"no exports", func(m map[string]any) { m["nbd"].(map[string]any)["exports"] = []any{} }, "exports is empty"},
		{"bad access", func(m map[string]any) {
			m["nbd"].(map[string]any)["exports"] = []any{map[string]any{"name": "x", "grants": []any{map[string]any{"identity": "c", "access": "all"}}}}
		}, "access"},
		{"network mode", func(m map[string]any) { m["network"] = map[string]any{"mode": "magic"} }, "network.mode"},
		{"static address", func(m map[string]any) { m["network"] = map[string]any{"mode": "static", "address": "10.0.2.15"} }, "network.address"},
		{"header size", func(m map[string]any) { m["disk"] = map[string]any{"header_size": 1000} }, "header_size"},
		{"retry", func(m map[string]any) { m["retry"] = map[string]any{"initial": "1m", "max": "1s"} }, "retry"},
		{"duration type", func(m map[string]any) { m["retry"] = map[string]any{"initial": 5} }, "duration"},
		{"metrics listen", func(m map[string]any) {
			m["metrics"] = map[string]any{"listen": "10.0.9.15", "client_ca_pem": m["nbd"].(map[string]any)["client_ca_pem"]}
		}, "metrics.listen"},
		{"metrics on nbd port", func(m map[string]any) {
			m["metrics"] = map[string]any{"listen": ":10809", "client_ca_pem": m["nbd"].(map[string]any)["client_ca_pem"]}
		}, "is nbd.listen"},
		{"metrics ca", func(m map[string]any) { m["metrics"] = map[string]any{"listen": ":9464", "client_ca_pem": "junk"} }, "metrics.client_ca_pem"},
		{"metrics field", func(m map[string]any) { m["metrics"] = map[string]any{"listen": ":9464", "ca": "x"} }, "unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := validConfig(t)
			tc.mutate(m)
			_, err := appliance.ParseConfig(marshal(t, m))
			if !errors.Is(err, appliance.ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %q does not mention %q", err, tc.want)
			}
		})
	}
	if _, err := appliance.ParseConfig(append(marshal(t, validConfig(t)), []byte(`{}`)...)); err == nil {
		t.Error("trailing data accepted")
	}
}

// verifiersConfig is validConfig with n verifiers named v0, v1, ... in the
// "verifiers" list instead of the legacy object.
func verifiersConfig(t testing.TB, n int) map[string]any {
	m := validConfig(t)
	legacy := m["verifier"].(map[string]any)
	delete(m, "verifier")
	var vs []any
	for i := range n {
		vs = append(vs, map[string]any{"name": fmt.Sprintf("v%d", i), "url": fmt.Sprintf("https://10.0.2.%d:8443", i+2), "ca_pem": legacy["ca_pem"]})
	}
	m["verifiers"] = vs
	return m
}

func TestParseConfigVerifiers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		config    func(t *testing.T) map[string]any
		want      string // error text; "" means valid
		names     []string
		threshold int
	}{
		{"legacy object is one verifier named verifier", func(t *testing.T) map[string]any { return validConfig(t) }, "", []string{"verifier"}, 1},
		{"one verifier, threshold defaults to 1", func(t *testing.T) map[string]any { return verifiersConfig(t, 1) }, "", []string{"v0"}, 1},
		{"2 of 3", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 3)
			m["threshold"] = 2
			return m
		}, "", []string{"v0", "v1", "v2"}, 2},
		{"16 of 16", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 16)
			m["threshold"] = 16
			return m
		}, "", nil, 16},
		{"both given", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 1)
			m["verifier"] = validConfig(t)["verifier"]
			return m
		}, "both verifier and verifiers", nil, 0},
		{"none", func(t *testing.T) map[string]any { return verifiersConfig(t, 0) }, "verifiers is empty", nil, 0},
		{"n=17", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 17)
			m["threshold"] = 9
			return m
		}, "17 verifiers, at most 16", nil, 0},
		{"threshold missing with n=3", func(t *testing.T) map[string]any { return verifiersConfig(t, 3) }, "threshold is required", nil, 0},
		{"k=0 with n=3", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 3)
			m["threshold"] = 0
			return m
		}, "threshold is required", nil, 0},
		{"k>n", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 3)
			m["threshold"] = 4
			return m
		}, "threshold 4, want 1..3", nil, 0},
		{"negative k", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 1)
			m["threshold"] = -1
			return m
		}, "threshold -1", nil, 0},
		{"k=2 with n=1", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 1)
			m["threshold"] = 2
			return m
		}, "threshold 2, want 1..1", nil, 0},
		{"duplicate name", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 3)
			m["threshold"] = 2
			m["verifiers"].([]any)[2].(map[string]any)["name"] = "v0"
			return m
		}, `"v0" listed twice`, nil, 0},
		{"empty name", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 2)
			m["threshold"] = 1
			m["verifiers"].([]any)[1].(map[string]any)["name"] = ""
			return m
		}, "verifiers[1].name is empty", nil, 0},
		{"bad name", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 2)
			m["threshold"] = 1
			m["verifiers"].([]any)[0].(map[string]any)["name"] = "Tallinn HQ"
			return m
		}, `verifiers[0].name "Tallinn HQ"`, nil, 0},
		{"bad url in the list", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 2)
			m["threshold"] = 2
			m["verifiers"].([]any)[1].(map[string]any)["url"] = "ftp://x"
			return m
		}, `verifier "v1": verifier.url`, nil, 0},
		{"bad ca in the list", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 2)
			m["threshold"] = 2
			m["verifiers"].([]any)[1].(map[string]any)["ca_pem"] = "junk"
			return m
		}, `verifier "v1": verifier.ca_pem`, nil, 0},
		{"http needs no ca", func(t *testing.T) map[string]any {
			m := verifiersConfig(t, 2)
			m["threshold"] = 2
			m["verifiers"].([]any)[1].(map[string]any)["url"] = "http://127.0.0.1:8080"
			m["verifiers"].([]any)[1].(map[string]any)["ca_pem"] = ""
			return m
		}, "", []string{"v0", "v1"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := appliance.ParseConfig(marshal(t, tc.config(t)))
			if tc.want != "" {
				if !errors.Is(err, appliance.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want ErrConfig mentioning %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.LegacyVerifier != nil {
				t.Error("legacy verifier left after parsing")
			}
			if c.Threshold != tc.threshold {
				t.Errorf("threshold %d, want %d", c.Threshold, tc.threshold)
			}
			if tc.names != nil {
				var got []string
				for _, v := range c.Verifiers {
					got = append(got, v.Name)
				}
				if !slices.Equal(got, tc.names) {
					t.Errorf("verifier names %q, want %q", got, tc.names)
				}
			}
			for _, v := range c.Verifiers {
				if v.URL == "" {
					t.Errorf("verifier %q lost its URL", v.Name)
				}
			}
		})
	}
}

// TestLegacyVerifierKeepsFields: the legacy object's url and CA become the
// one verifier's, and the parsed configuration re-parses to the same list.
func TestLegacyVerifierKeepsFields(t *testing.T) {
	m := validConfig(t)
	legacy := m["verifier"].(map[string]any)
	c, err := appliance.ParseConfig(marshal(t, m))
	if err != nil {
		t.Fatal(err)
	}
	want := []appliance.VerifierConfig{{Name: "verifier", URL: legacy["url"].(string), CAPEM: legacy["ca_pem"].(string)}}
	if !slices.Equal(c.Verifiers, want) {
		t.Fatalf("verifiers %+v, want %+v", c.Verifiers, want)
	}
	c2, err := appliance.ParseConfig(marshal(t, c))
	if err != nil {
		t.Fatalf("re-parsing: %v", err)
	}
	if !slices.Equal(c2.Verifiers, want) || c2.Threshold != 1 {
		t.Fatalf("re-parsed verifiers %+v threshold %d", c2.Verifiers, c2.Threshold)
	}
}

// TestValidateRejectsUnnormalisedLegacy: a Config built in code with the
// legacy field set fails validation rather than attesting nowhere.
func TestValidateRejectsUnnormalisedLegacy(t *testing.T) {
	c, err := appliance.ParseConfig(marshal(t, validConfig(t)))
	if err != nil {
		t.Fatal(err)
	}
	c.LegacyVerifier = &c.Verifiers[0]
	if err := c.Validate(); !errors.Is(err, appliance.ErrConfig) || !strings.Contains(err.Error(), "both verifier and verifiers") {
		t.Fatalf("Validate = %v, want both-given ErrConfig", err)
	}
	c.Verifiers = nil
	if err := c.Validate(); !errors.Is(err, appliance.ErrConfig) || !strings.Contains(err.Error(), "not normalised") {
		t.Fatalf("Validate = %v, want not-normalised ErrConfig", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(marshal(f, validConfig(f)))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"retry":{"initial":"-1s"}}`))
	f.Add([]byte(`[]`))
	f.Add(marshal(f, func() map[string]any { m := verifiersConfig(f, 3); m["threshold"] = 2; return m }()))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := appliance.ParseConfig(data)
		if err != nil {
			if !errors.Is(err, appliance.ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			return
		}
		// Whatever parses must validate again and round-trip.
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config fails validation: %v", err)
		}
		c2, err := appliance.ParseConfig(marshal(t, c))
		if err != nil {
			t.Fatalf("re-parsing a parsed config: %v", err)
		}
		if c2.Identity != c.Identity || c2.NBD.Listen != c.NBD.Listen ||
			!slices.Equal(c2.Verifiers, c.Verifiers) || c2.Threshold != c.Threshold {
			t.Fatal("round trip changed the config")
		}
	})
}
