package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/dataembassy/embassy/storage"
)

func init() {
	register(command{
		name:    "store",
		summary: "format, inspect, verify and export authenticated block stores",
		run:     runStore,
	})
}

const storeUsage = `usage: embassyctl store <subcommand> [flags] DEVICE

subcommands:
  keygen   create a KEK file and a recovery key pair (for tools and tests)
  format   format a store on a file or block device
  show     print the store header (authenticated when a key is given)
  verify   authenticate every block; exit 1 if any is corrupt
  export   write the plaintext image (normally opened with the recovery key)

Flags go before DEVICE. Run 'embassyctl store <subcommand> --help'.
`

func runStore(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, storeUsage, map[string]subcommand{
		"keygen": storeKeygen, "format": storeFormat, "show": storeShow,
		"verify": storeVerify, "export": storeExport,
	})
}

// addKEKFlags adds --kek and --counter, the store's key and rollback
// counter, which every command that opens or formats a store (store
// show/verify/export/format, serve) takes alike; note ends their help.
func addKEKFlags(fs *cmdFlags, note string) (kek, counter *string) {
	kek = fs.String("kek", "", "KEK file (32 raw bytes or 64 hex digits)"+note)
	counter = fs.String("counter", "", "file-backed monotonic rollback counter (optional)"+note)
	return kek, counter
}

// keyFlags are the ways to open a store.
type keyFlags struct {
	kek, recovery, counter *string
}

// newKeyFlags returns the flag set of "store name [flags] DEVICE" with
// the flags that open a store.
func newKeyFlags(name string, stdout, stderr io.Writer) (*cmdFlags, *keyFlags) {
	fs := newFlags("store "+name, "[flags] DEVICE", stdout, stderr).args(1, 1)
	var k keyFlags
	k.kek, k.counter = addKEKFlags(fs, "")
	k.recovery = fs.String("recovery-key", "", "recovery private key file (PEM), instead of --kek")
	return fs, &k
}

func (k *keyFlags) openOptions() (storage.OpenOptions, error) {
	var o storage.OpenOptions
	switch {
	case *k.kek != "" && *k.recovery != "":
		return o, fmt.Errorf("%w: give --kek or --recovery-key, not both", errUsage)
	case *k.kek != "":
		kek, err := readKEKFile(*k.kek)
		if err != nil {
			return o, err
		}
		o.KEK = kek
	case *k.recovery != "":
		b, err := os.ReadFile(*k.recovery)
		if err != nil {
			return o, err
		}
		if o.Recovery, err = storage.ParseRecoveryPrivateKey(b); err != nil {
			return o, err
		}
	default:
		return o, fmt.Errorf("%w: --kek or --recovery-key is required", errUsage)
	}
	if *k.counter != "" {
		o.Counter = storage.NewFileCounter(*k.counter)
	}
	return o, nil
}

// openStoreReadOnly opens the store on path read-only with the key flags.
func openStoreReadOnly(path string, k *keyFlags) (*storage.Store, func(), error) {
	o, err := k.openOptions()
	if err != nil {
		return nil, nil, err
	}
	o.ReadOnly = true
	dev, err := storage.OpenFileDevice(path, true)
	if err != nil {
		return nil, nil, err
	}
	s, err := storage.Open(dev, o)
	if err != nil {
		dev.Close()
		return nil, nil, err
	}
	return s, func() { s.Close(); dev.Close() }, nil
}

func storeKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("store keygen", "[flags]", stdout, stderr)
	kek := fs.String("kek", "", "write a new random KEK here (32 raw bytes, as --kek of the other commands wants)")
	priv := fs.String("recovery-key", "", "write a new recovery private key here (PEM)")
	pub := fs.String("recovery-pub", "", "write the recovery public key here (PEM); needs --recovery-key")
	if err := fs.parse(args); err != nil {
		return err
	}
	if *kek == "" && *priv == "" {
		return fs.usageError("nothing to do: give --kek and/or --recovery-key")
	}
	if (*priv == "") != (*pub == "") {
		return fs.usageError("--recovery-key and --recovery-pub go together")
	}
	if *kek != "" {
		k := make([]byte, storage.KEKSize)
		if _, err := rand.Read(k); err != nil {
			return err
		}
		if err := writeNew(*kek, k, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "KEK written to %s\n", *kek)
	}
	if *priv != "" {
		sk, err := storage.GenerateRecoveryKey()
		if err != nil {
			return err
		}
		pemPriv, err := storage.MarshalRecoveryPrivateKey(sk)
		if err != nil {
			return err
		}
		if err := writeNew(*priv, pemPriv, 0o600); err != nil {
			return err
		}
		if err := writeNew(*pub, storage.MarshalRecoveryPublicKey(sk.PublicKey()), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "recovery key pair written to %s and %s\n", *priv, *pub)
	}
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40} {
		if strings.HasSuffix(s, suf) || strings.HasSuffix(s, suf+"iB") {
			s = strings.TrimSuffix(strings.TrimSuffix(s, "iB"), suf)
			mult = m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: bad size %q", errUsage, s)
	}
	return n * mult, nil
}

func storeFormat(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("store format", "[flags] DEVICE", stdout, stderr).args(1, 1)
	kekPath, counter := addKEKFlags(fs, "")
	pubPath := fs.String("recovery-pub", "", "recovery public key file (PEM)")
	size := fs.String("size", "", "logical store size (e.g. 10G); default: the largest that fits")
	create := fs.String("create", "", "create DEVICE as a regular file of this size first (e.g. 21G), allocated in full")
	sparse := fs.Bool("sparse", false, "with --create: leave the file sparse (writes can then fail when its filesystem fills up)")
	asJSON := fs.Bool("json", false, "print the header as JSON")
	if err := fs.require("kek").parse(args); err != nil {
		return err
	}
	var opts storage.FormatOptions
	var err error
	if opts.KEK, err = readKEKFile(*kekPath); err != nil {
		return err
	}
	if *pubPath != "" {
		b, err := os.ReadFile(*pubPath)
		if err != nil {
			return err
		}
		if opts.Recovery, err = storage.ParseRecoveryPublicKey(b); err != nil {
			return err
		}
	}
	if *size != "" {
		if opts.Size, err = parseSize(*size); err != nil {
			return err
		}
	}
	if *counter != "" {
		opts.Counter = storage.NewFileCounter(*counter)
	}
	path := fs.Arg(0)
	var dev *storage.FileDevice
	if *create != "" {
		n, err := parseSize(*create)
		if err != nil {
			return err
		}
		dev, err = storage.CreateFileDevice(path, n)
		if err != nil {
			return err
		}
		if !*sparse {
			if err := dev.Allocate(); err != nil {
				dev.Close()
				return fmt.Errorf("%w (--sparse leaves the file sparse)", err)
			}
		}
	} else if *sparse {
		return fs.usageError("--sparse goes with --create")
	} else if dev, err = storage.OpenFileDevice(path, false); err != nil {
		return err
	}
	defer dev.Close()
	s, err := storage.Format(dev, opts)
	if err != nil {
		return err
	}
	info := s.Info()
	if err := s.Close(); err != nil {
		return err
	}
	if err := dev.Sync(); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, info)
	}
	fmt.Fprintf(stdout, "formatted %s: store %s, %s logical (%d blocks), epoch %d\n",
		path, info.UUID, human(info.Size), info.Blocks, info.Epoch)
	return nil
}

func printInfo(w io.Writer, in storage.Info) {
	auth := "NOT authenticated (no key given)"
	if in.Authenticated {
		auth = "authenticated"
	}
	fmt.Fprintf(w, "superblock copy %d (%s)\n", in.Copy, auth)
	fmt.Fprintf(w, "  format version  %d\n", in.Version)
	fmt.Fprintf(w, "  uuid            %s\n", in.UUID)
	fmt.Fprintf(w, "  size            %s (%d bytes, %d blocks of %d)\n", human(in.Size), in.Size, in.Blocks, storage.BlockSize)
	fmt.Fprintf(w, "  device needed   %s (%d bytes)\n", human(in.LayoutBytes), in.LayoutBytes)
	fmt.Fprintf(w, "  tree depth      %d\n", in.TreeDepth)
	fmt.Fprintf(w, "  epoch           %d\n", in.Epoch)
	fmt.Fprintf(w, "  counter         %d\n", in.Counter)
	fmt.Fprintf(w, "  key slots       KEK=%v recovery=%v", in.KEKSlot, in.RecoverySlot)
	if in.RecoverySlot {
		fmt.Fprintf(w, " (HPKE KEM 0x%04x)", in.RecoveryKEM)
	}
	fmt.Fprintln(w)
}

func storeShow(args []string, stdout, stderr io.Writer) error {
	fs, k := newKeyFlags("show", stdout, stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.parse(args); err != nil {
		return err
	}
	if *k.kek == "" && *k.recovery == "" {
		dev, err := storage.OpenFileDevice(fs.Arg(0), true)
		if err != nil {
			return err
		}
		defer dev.Close()
		infos, errs, err := storage.Inspect(dev)
		if err != nil {
			return err
		}
		if *asJSON {
			msgs := []string{}
			for _, e := range errs {
				msgs = append(msgs, e.Error())
			}
			return printJSON(stdout, map[string]any{"superblocks": infos, "errors": msgs})
		}
		for _, in := range infos {
			printInfo(stdout, in)
		}
		for _, e := range errs {
			fmt.Fprintf(stdout, "%v\n", e)
		}
		if len(infos) == 0 {
			return errors.New("no readable superblock")
		}
		return nil
	}
	s, done, err := openStoreReadOnly(fs.Arg(0), k)
	if err != nil {
		return err
	}
	defer done()
	if *asJSON {
		return printJSON(stdout, s.Info())
	}
	printInfo(stdout, s.Info())
	return nil
}

// errCorrupt makes verify exit non-zero after printing its report.
var errCorrupt = errors.New("store has corrupted blocks")

func storeVerify(args []string, stdout, stderr io.Writer) error {
	fs, k := newKeyFlags("verify", stdout, stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.parse(args); err != nil {
		return err
	}
	s, done, err := openStoreReadOnly(fs.Arg(0), k)
	if err != nil {
		return err
	}
	defer done()
	bad, err := s.Verify()
	if err != nil {
		return err
	}
	type rangeJSON struct {
		FirstBlock uint64 `json:"first_block"`
		Blocks     uint64 `json:"blocks"`
		Offset     int64  `json:"offset"`
		Length     int64  `json:"length"`
		Error      string `json:"error"`
	}
	out := struct {
		OK      bool        `json:"ok"`
		Epoch   uint64      `json:"epoch"`
		Blocks  uint64      `json:"blocks"`
		Corrupt []rangeJSON `json:"corrupt"`
	}{OK: len(bad) == 0, Epoch: s.Epoch(), Blocks: uint64(s.Size() / storage.BlockSize), Corrupt: []rangeJSON{}}
	for _, r := range bad {
		out.Corrupt = append(out.Corrupt, rangeJSON{r.First, r.Count, int64(r.First) * storage.BlockSize, int64(r.Count) * storage.BlockSize, r.Err.Error()})
	}
	if *asJSON {
		if err := printJSON(stdout, out); err != nil {
			return err
		}
	} else {
		for _, r := range out.Corrupt {
			fmt.Fprintf(stdout, "CORRUPT blocks %d-%d (bytes %d-%d): %s\n", r.FirstBlock, r.FirstBlock+r.Blocks-1, r.Offset, r.Offset+r.Length-1, r.Error)
		}
		if out.OK {
			fmt.Fprintf(stdout, "verified %d blocks at epoch %d: all authentic\n", out.Blocks, out.Epoch)
		}
	}
	if !out.OK {
		return fmt.Errorf("%w: %d corrupted range(s)", errCorrupt, len(bad))
	}
	return nil
}

func storeExport(args []string, stdout, stderr io.Writer) error {
	fs, k := newKeyFlags("export", stdout, stderr)
	outPath := fs.String("out", "", "output image file (required; must not exist)")
	if err := fs.require("out").parse(args); err != nil {
		return err
	}
	s, done, err := openStoreReadOnly(fs.Arg(0), k)
	if err != nil {
		return err
	}
	defer done()
	out, err := os.OpenFile(*outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(*outPath) // never leave a partial plaintext image
		}
	}()
	size := s.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var copied int64
	const window = 1 << 30
	for pos := int64(0); pos < size; pos += window {
		exts, err := s.BlockStatus(pos, min(window, size-pos))
		if err != nil {
			return err
		}
		for _, e := range exts {
			if e.Zero {
				continue // holes stay sparse in the output
			}
			for o := e.Offset; o < e.Offset+e.Length; o += int64(len(buf)) {
				n := min(int64(len(buf)), e.Offset+e.Length-o)
				if _, err := s.ReadAt(buf[:n], o); err != nil {
					return fmt.Errorf("at byte %d: %w", o, err)
				}
				if _, err := out.WriteAt(buf[:n], o); err != nil {
					return err
				}
				copied += n
			}
		}
	}
	if err := out.Sync(); err != nil {
		return err
	}
	ok = true
	fmt.Fprintf(stdout, "exported %s (%s of data, epoch %d) to %s\n", human(size), human(copied), s.Epoch(), *outPath)
	return nil
}
