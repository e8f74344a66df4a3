package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/dataembassy/embassy/attest/release"
)

func init() {
	register(command{
		name:    "release",
		summary: "release signing keys and manifests: keygen, sign, inspect, verify",
		run:     runRelease,
	})
}

const releaseUsage = `usage: embassyctl release <subcommand> [flags]

subcommands:
  keygen  --out NAME                    write NAME.priv and NAME.pub (Ed25519)
  sign    --key K.priv [--manifest M.json | --envelope E.json] --out E.json
                                        sign a manifest (new envelope) or add a
                                        signature to an existing envelope
  inspect [--json] E.json               show an envelope's manifest and signers
  verify  --trust K.pub[,K2.pub] [-k N] [--json] E.json
                                        verify k-of-n signatures by trusted keys

verifier (its admin API: --verifier URL --cert F --key F [--ca F];
recovery mode: --db D on the verifier host):
  trust     K.pub...                     trust release signing keys
  threshold K                            require K distinct trusted signatures
  publish   E.json                       verify (k of n) and accept a release;
                                         --verifier (or --db) once per verifier
  list      [--json]                     published releases
  withdraw  DIGEST                       stop accepting a release
`

func runRelease(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, releaseUsage, map[string]subcommand{
		"keygen":    releaseKeygen,
		"sign":      releaseSign,
		"inspect":   releaseInspect,
		"verify":    releaseVerify,
		"trust":     releaseTrust,
		"threshold": releaseThreshold,
		"publish":   releasePublish,
		"list":      releaseList,
		"withdraw":  releaseWithdraw,
	})
}

func releaseKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("release keygen", "--out NAME", stdout, stderr)
	out := fs.String("out", "", "path prefix: writes NAME.priv (mode 0600) and NAME.pub")
	if err := fs.require("out").parse(args); err != nil {
		return err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if err := writeNew(*out+".priv", release.MarshalPrivateKey(priv), 0o600); err != nil {
		return err
	}
	if err := writeNew(*out+".pub", release.MarshalPublicKey(pub), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "key %s: %s.priv %s.pub\n", release.KeyID(pub), *out, *out)
	return nil
}

func releaseSign(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("release sign", "--key K.priv (--manifest M.json | --envelope E.json) --out E.json", stdout, stderr)
	keyPath := fs.String("key", "", "release private key file")
	manifestPath := fs.String("manifest", "", "manifest JSON to sign (starts a new envelope)")
	envPath := fs.String("envelope", "", "existing envelope to add a signature to")
	out := fs.String("out", "", "output envelope file (may equal --envelope)")
	if err := fs.require("key", "out").parse(args); err != nil {
		return err
	}
	if (*manifestPath == "") == (*envPath == "") {
		return fs.usageError("exactly one of --manifest or --envelope required")
	}
	kb, err := os.ReadFile(*keyPath)
	if err != nil {
		return err
	}
	priv, err := release.ParsePrivateKey(kb)
	if err != nil {
		return err
	}
	var env *release.Envelope
	if *manifestPath != "" {
		mb, err := os.ReadFile(*manifestPath)
		if err != nil {
			return err
		}
		if _, err := release.ParseManifest(mb); err != nil {
			return err
		}
		// Sign the exact bytes given, so the signed payload is the file.
		env = &release.Envelope{Version: release.EnvelopeVersion, Payload: mb}
	} else {
		eb, err := os.ReadFile(*envPath)
		if err != nil {
			return err
		}
		if env, err = release.ParseEnvelope(eb); err != nil {
			return err
		}
		if _, err := release.ParseManifest(env.Payload); err != nil {
			return err
		}
	}
	env.Sign(priv)
	data, err := env.Marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed by %s: %s (%d signatures)\n", release.KeyID(priv.Public().(ed25519.PublicKey)), *out, len(env.Signatures))
	return nil
}

func readEnvelope(path string) (*release.Envelope, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return release.ParseEnvelope(b)
}

// manifestView is the --json output of inspect and verify.
type manifestView struct {
	Digest     string            `json:"digest"`
	Manifest   *release.Manifest `json:"manifest"`
	Signatures []string          `json:"signatures"`
	Verified   []string          `json:"verified_by,omitempty"`
}

// newManifestView shows env's manifest m (digest: of its payload), with
// the keys whose signatures were verified, if any.
func newManifestView(env *release.Envelope, digest [32]byte, m *release.Manifest, verified []string) manifestView {
	v := manifestView{Digest: hex.EncodeToString(digest[:]), Manifest: m, Verified: verified, Signatures: []string{}}
	for _, s := range env.Signatures {
		v.Signatures = append(v.Signatures, s.KeyID)
	}
	return v
}

func printManifest(w io.Writer, v manifestView) {
	m := v.Manifest
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name\t%s\nrelease\t%s\ncreated\t%s\ndigest\t%s\n", m.Name, m.Release, m.Created.Format("2006-01-02T15:04:05Z07:00"), v.Digest)
	fmt.Fprintf(tw, "signatures\t%s\n", strings.Join(v.Signatures, ", "))
	if v.Verified != nil {
		fmt.Fprintf(tw, "verified by\t%s\n", strings.Join(v.Verified, ", "))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nPCR  SHA-256")
	idx := make([]int, 0, len(m.PCRs))
	for k := range m.PCRs {
		n, _ := strconv.Atoi(k)
		idx = append(idx, n)
	}
	sort.Ints(idx)
	for _, n := range idx {
		fmt.Fprintf(w, "%-4d %s\n", n, m.PCRs[strconv.Itoa(n)])
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tSIZE\tSHA-256")
	for _, c := range m.Components {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", c.Name, c.Size, c.SHA256)
	}
	tw.Flush()
}

func releaseInspect(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("release inspect", "[--json] ENVELOPE.json", stdout, stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.args(1, 1).parse(args); err != nil {
		return err
	}
	env, err := readEnvelope(fs.Arg(0))
	if err != nil {
		return err
	}
	m, err := release.ParseManifest(env.Payload)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(env.Payload)
	v := newManifestView(env, sum, m, nil)
	if *asJSON {
		return printJSON(stdout, v)
	}
	fmt.Fprintln(stdout, "(signatures NOT verified; use 'embassyctl release verify')")
	printManifest(stdout, v)
	return nil
}

func releaseVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("release verify", "--trust K.pub[,K2.pub...] [-k N] [--json] ENVELOPE.json", stdout, stderr)
	trust := fs.String("trust", "", "comma-separated trusted release public key files")
	k := fs.Int("k", 1, "number of distinct trusted signatures required")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.require("trust").args(1, 1).parse(args); err != nil {
		return err
	}
	keys, err := readPublicKeys(strings.Split(*trust, ","))
	if err != nil {
		return err
	}
	env, err := readEnvelope(fs.Arg(0))
	if err != nil {
		return err
	}
	ver, err := env.Verify(keys, *k)
	if err != nil {
		return err
	}
	v := newManifestView(env, ver.Digest, ver.Manifest, ver.SignedBy)
	if *asJSON {
		return printJSON(stdout, v)
	}
	fmt.Fprintf(stdout, "OK: %d of %d required trusted signatures\n", len(ver.SignedBy), *k)
	printManifest(stdout, v)
	return nil
}

func readPublicKeys(paths []string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for _, p := range paths {
		b, err := os.ReadFile(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		k, err := release.ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}
