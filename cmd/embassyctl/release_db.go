package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
)

func releaseTrust(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("release trust", "[--db D] KEY.pub...", stdout, stderr)
	if err := fs.args(1, -1).parse(args); err != nil {
		return err
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
	fs, df := newDBFlags("release threshold", "[--db D] K", stdout, stderr)
	if err := fs.args(1, 1).parse(args); err != nil {
		return err
	}
	k, err := strconv.Atoi(fs.Arg(0))
	if err != nil || k < 1 {
		return fs.usageError("threshold must be a positive integer")
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
	fs, df := newDBFlags("release publish", "[--db D] [--json] ENVELOPE.json", stdout, stderr)
	if err := fs.args(1, 1).parse(args); err != nil {
		return err
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
		view := newManifestView(env, v.Digest, v.Manifest, v.SignedBy)
		if *df.json {
			return printJSON(stdout, view)
		}
		fmt.Fprintf(stdout, "published %s %s\n", v.Manifest.Name, v.Manifest.Release)
		printManifest(stdout, view)
		return nil
	})
}

// releaseList prints the published releases.
var releaseList = listCommand("release list", "DIGEST\tNAME\tRELEASE\tPUBLISHED\tWITHDRAWN", (*verifier.DB).Releases, func(tw io.Writer, r verifier.ReleaseInfo) {
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Digest, r.Name, r.Release, r.Published.Format(time.RFC3339), fmtTime(r.Withdrawn))
})

func releaseWithdraw(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("release withdraw", "[--db D] DIGEST", stdout, stderr)
	if err := fs.args(1, 1).parse(args); err != nil {
		return err
	}
	return df.withDB(func(ctx context.Context, db *verifier.DB) error {
		if err := db.WithdrawRelease(ctx, fs.Arg(0), *df.actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "withdrawn %s\n", fs.Arg(0))
		return nil
	})
}
