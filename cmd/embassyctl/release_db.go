package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/dataembassy/embassy/attest/release"
)

func releaseTrust(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release trust", "release trust [--db D] KEY.pub...", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("%w: key file required", errUsage)
	}
	keys, err := readPublicKeys(fs.Args())
	if err != nil {
		return err
	}
	db, err := df.open()
	if err != nil {
		return err
	}
	defer db.Close()
	for _, k := range keys {
		if err := db.AddReleaseKey(context.Background(), k, *df.actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "trusted release key %s\n", release.KeyID(k))
	}
	return nil
}

func releaseThreshold(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release threshold", "release threshold [--db D] K", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("%w: threshold required", errUsage)
	}
	k, err := strconv.Atoi(fs.Arg(0))
	if err != nil || k < 1 {
		return fmt.Errorf("%w: threshold must be a positive integer", errUsage)
	}
	db, err := df.open()
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.SetReleaseThreshold(context.Background(), k, *df.actor); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "releases now need %d distinct trusted signatures\n", k)
	return nil
}

func releasePublish(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release publish", "release publish [--db D] [--json] ENVELOPE.json", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("%w: one envelope file expected", errUsage)
	}
	env, err := readEnvelope(fs.Arg(0))
	if err != nil {
		return err
	}
	db, err := df.open()
	if err != nil {
		return err
	}
	defer db.Close()
	v, err := db.PublishRelease(context.Background(), env, *df.actor)
	if err != nil {
		return err
	}
	view := manifestView{Digest: hex.EncodeToString(v.Digest[:]), Manifest: v.Manifest, Verified: v.SignedBy, Signatures: []string{}}
	for _, s := range env.Signatures {
		view.Signatures = append(view.Signatures, s.KeyID)
	}
	if *df.json {
		return printJSON(stdout, view)
	}
	fmt.Fprintf(stdout, "published %s %s\n", v.Manifest.Name, v.Manifest.Release)
	printManifest(stdout, view)
	return nil
}

func releaseList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release list", "release list [--db D] [--json]", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	db, err := df.open()
	if err != nil {
		return err
	}
	defer db.Close()
	list, err := db.Releases(context.Background())
	if err != nil {
		return err
	}
	if *df.json {
		return printJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DIGEST\tNAME\tRELEASE\tPUBLISHED\tWITHDRAWN")
	for _, r := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Digest, r.Name, r.Release, r.Published.Format(time.RFC3339), fmtTime(r.Withdrawn))
	}
	return tw.Flush()
}

func releaseWithdraw(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release withdraw", "release withdraw [--db D] DIGEST", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("%w: release digest required", errUsage)
	}
	db, err := df.open()
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.WithdrawRelease(context.Background(), fs.Arg(0), *df.actor); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "withdrawn %s\n", fs.Arg(0))
	return nil
}
