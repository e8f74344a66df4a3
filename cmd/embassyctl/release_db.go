package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
)

func releaseTrust(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release trust", "release trust [--db D] KEY.pub...", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError(fs, "key file required")
	}
	keys, err := readPublicKeys(fs.Args())
	if err != nil {
		return err
	}
	return df.withDB(func(ctx context.Context, db *verifier.DB) error {
		for _, k := range keys {
			if err := db.AddReleaseKey(ctx, k, *df.actor); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "trusted release key %s\n", release.KeyID(k))
		}
		return nil
	})
}

func releaseThreshold(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release threshold", "release threshold [--db D] K", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError(fs, "threshold required")
	}
	k, err := strconv.Atoi(fs.Arg(0))
	if err != nil || k < 1 {
		return fmt.Errorf("%w: threshold must be a positive integer", errUsage)
	}
	return df.withDB(func(ctx context.Context, db *verifier.DB) error {
		if err := db.SetReleaseThreshold(ctx, k, *df.actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "releases now need %d distinct trusted signatures\n", k)
		return nil
	})
}

func releasePublish(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release publish", "release publish [--db D] [--json] ENVELOPE.json", stderr)
	df := addDBFlags(fs)
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
	return df.withDB(func(ctx context.Context, db *verifier.DB) error {
		v, err := db.PublishRelease(ctx, env, *df.actor)
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
	})
}

func releaseList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release list", "release list [--db D] [--json]", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return df.withDB(func(ctx context.Context, db *verifier.DB) error {
		list, err := db.Releases(ctx)
		if err != nil {
			return err
		}
		if *df.json {
			return printJSON(stdout, list)
		}
		tw := newTable(stdout, "DIGEST\tNAME\tRELEASE\tPUBLISHED\tWITHDRAWN")
		for _, r := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Digest, r.Name, r.Release, r.Published.Format(time.RFC3339), fmtTime(r.Withdrawn))
		}
		return tw.Flush()
	})
}

func releaseWithdraw(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release withdraw", "release withdraw [--db D] DIGEST", stderr)
	df := addDBFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError(fs, "release digest required")
	}
	return df.withDB(func(ctx context.Context, db *verifier.DB) error {
		if err := db.WithdrawRelease(ctx, fs.Arg(0), *df.actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "withdrawn %s\n", fs.Arg(0))
		return nil
	})
}
