package main

import (
	"fmt"
	"io"
	"os"
)

// storeExport writes a store's plaintext image (normally opened with the
// recovery key): holes stay sparse, and a failed export leaves no file.
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
