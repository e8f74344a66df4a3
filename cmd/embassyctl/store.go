package main

import (
	"crypto/rand"
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

// storeKeygen writes a new KEK file and/or recovery key pair.
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

// parseSize parses a byte count with an optional K, M, G or T (or KiB...)
// suffix.
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

// storeFormat formats a store on a file or block device.
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
