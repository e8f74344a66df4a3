package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
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
  keygen  -out NAME                     write NAME.priv and NAME.pub (Ed25519)
  sign    -key K.priv [-manifest M.json | -envelope E.json] -out E.json
                                        sign a manifest (new envelope) or add a
                                        signature to an existing envelope
  inspect [--json] E.json               show an envelope's manifest and signers
  verify  -trust K.pub[,K2.pub] [-k N] [--json] E.json
                                        verify k-of-n signatures by trusted keys

verifier database (on the verifier host; --db, env EMBASSY_VERIFIER_DB):
  trust     [--db D] K.pub...            trust release signing keys
  threshold [--db D] K                   require K distinct trusted signatures
  publish   [--db D] E.json              verify (k of n) and accept a release
  list      [--db D] [--json]            published releases
  withdraw  [--db D] DIGEST              stop accepting a release
`

func runRelease(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, releaseUsage, map[string]func([]string, io.Writer, io.Writer) error{
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

// newFlagSet returns a flag set that prints its usage to stderr and reports
// parse errors as usage errors.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: embassyctl %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

func releaseKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release keygen", "release keygen -out NAME", stderr)
	out := fs.String("out", "", "path prefix: writes NAME.priv (mode 0600) and NAME.pub")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		return usageError(fs, "-out is required")
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

// writeNew writes a file that must not exist yet, so keys are never
// overwritten by accident.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func releaseSign(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release sign", "release sign -key K.priv (-manifest M.json | -envelope E.json) -out E.json", stderr)
	keyPath := fs.String("key", "", "release private key file")
	manifestPath := fs.String("manifest", "", "manifest JSON to sign (starts a new envelope)")
	envPath := fs.String("envelope", "", "existing envelope to add a signature to")
	out := fs.String("out", "", "output envelope file (may equal -envelope)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *keyPath == "" || *out == "" || (*manifestPath == "") == (*envPath == "") || fs.NArg() != 0 {
		return usageError(fs, "need -key, -out and exactly one of -manifest or -envelope")
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
	fs := newFlagSet("release inspect", "release inspect [--json] ENVELOPE.json", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError(fs, "one envelope file expected")
	}
	env, err := readEnvelope(fs.Arg(0))
	if err != nil {
		return err
	}
	m, err := release.ParseManifest(env.Payload)
	if err != nil {
		return err
	}
	v := manifestView{Digest: payloadDigest(env), Manifest: m, Signatures: []string{}}
	for _, s := range env.Signatures {
		v.Signatures = append(v.Signatures, s.KeyID)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(v)
	}
	fmt.Fprintln(stdout, "(signatures NOT verified; use 'embassyctl release verify')")
	printManifest(stdout, v)
	return nil
}

func payloadDigest(env *release.Envelope) string {
	return hex.EncodeToString(sha256Sum(env.Payload))
}

func releaseVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release verify", "release verify -trust K.pub[,K2.pub...] [-k N] [--json] ENVELOPE.json", stderr)
	trust := fs.String("trust", "", "comma-separated trusted release public key files")
	k := fs.Int("k", 1, "number of distinct trusted signatures required")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *trust == "" || fs.NArg() != 1 {
		return usageError(fs, "-trust and one envelope file required")
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
	v := manifestView{Digest: hex.EncodeToString(ver.Digest[:]), Manifest: ver.Manifest, Verified: ver.SignedBy, Signatures: []string{}}
	for _, s := range env.Signatures {
		v.Signatures = append(v.Signatures, s.KeyID)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(v)
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
