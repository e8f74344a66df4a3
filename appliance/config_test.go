package appliance_test

import (
	"encoding/json"
	"errors"
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

func FuzzParseConfig(f *testing.F) {
	f.Add(marshal(f, validConfig(f)))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"retry":{"initial":"-1s"}}`))
	f.Add([]byte(`[]`))
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
		if c2.Identity != c.Identity || c2.NBD.Listen != c.NBD.Listen {
			t.Fatal("round trip changed the config")
		}
	})
}
