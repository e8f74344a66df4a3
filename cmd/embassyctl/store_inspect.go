package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/dataembassy/embassy/storage"
)

// printInfo prints one superblock's header as show reports it.
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

// storeShow prints the store header: every readable superblock without a
// key, the authenticated one with a key.
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

// storeVerify authenticates every block and reports the corrupt ranges.
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
