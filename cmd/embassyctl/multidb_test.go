package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// signedRelease writes a release key pair and an envelope it signed into
// a temporary directory and returns the key's prefix and the envelope.
func signedRelease(t *testing.T) (key, env string) {
	t.Helper()
	dir := t.TempDir()
	key = filepath.Join(dir, "officer")
	if out, code := ctl(t, "release", "keygen", "--out", key); code != 0 {
		t.Fatalf("keygen: %s", out)
	}
	m := filepath.Join(dir, "m.json")
	os.WriteFile(m, []byte(`{"version":1,"name":"embassy-appliance","release":"7","created":"2026-12-07T10:00:00Z","components":[],"pcrs":{"15":"`+strings.Repeat("cd", 32)+`"}}`), 0o644)
	env = filepath.Join(dir, "e.json")
	if out, code := ctl(t, "release", "sign", "--key", key+".priv", "--manifest", m, "--out", env); code != 0 {
		t.Fatalf("sign: %s", out)
	}
	return key, env
}

// TestReleasePublishToEveryVerifier: release publish with --db repeated
// publishes to each verifier database, each checking the signatures
// against its own trusted keys, and says per database what happened.
func TestReleasePublishToEveryVerifier(t *testing.T) {
	key, env := signedRelease(t)
	a, b, c := newDB(t), newDB(t), newDB(t)
	for _, db := range []string{a, b} {
		if out, code := ctl(t, "release", "trust", "--db", db, key+".pub"); code != 0 {
			t.Fatalf("trust: %s", out)
		}
	}
	// c does not trust the officer: it refuses, the others publish.
	out, code := ctl(t, "release", "publish", "--db", a, "--db", b, "--db", c, env)
	if code != 1 || !strings.Contains(out, a+": published embassy-appliance 7") || !strings.Contains(out, b+": published") ||
		!strings.Contains(out, c+": NOT published") || !strings.Contains(out, "not published to 1 of 3 verifier databases: "+c) {
		t.Fatalf("publish to 3, one refusing: exit %d\n%s", code, out)
	}
	for db, want := range map[string]int{a: 1, b: 1, c: 0} {
		out, code := ctl(t, "release", "list", "--db", db, "--json")
		var rels []map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &rels) != nil || len(rels) != want {
			t.Errorf("%s lists %s, want %d releases", db, out, want)
		}
	}
	ctl(t, "release", "trust", "--db", c, key+".pub")
	out, code = ctl(t, "release", "publish", "--json", "--db", c, env)
	var one manifestView
	if code != 0 || json.Unmarshal([]byte(out), &one) != nil || one.Manifest.Release != "7" || len(one.Verified) != 1 {
		t.Fatalf("publish to one database, --json: exit %d\n%s", code, out)
	}
	if out, code := ctl(t, "release", "publish", "--db", a, "--db", a, env); code != 2 || !strings.Contains(out, "given twice") {
		t.Fatalf("one database twice: exit %d\n%s", code, out)
	}
}
