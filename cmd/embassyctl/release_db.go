package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/attest/verifier"
)

func releaseTrust(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("release trust", "[--verifier URL | --db D] KEY.pub...", stdout, stderr)
	if err := fs.args(1, -1).parse(args); err != nil {
		return err
	}
	keys, err := readPublicKeys(fs.Args())
	if err != nil {
		return err
	}
	return df.withDB(func(ctx context.Context, db verifierState) error {
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
	fs, df := newDBFlags("release threshold", "[--verifier URL | --db D] K", stdout, stderr)
	if err := fs.args(1, 1).parse(args); err != nil {
		return err
	}
	k, err := strconv.Atoi(fs.Arg(0))
	if err != nil || k < 1 {
		return fs.usageError("threshold must be a positive integer")
	}
	return df.withDB(func(ctx context.Context, db verifierState) error {
		if err := db.SetReleaseThreshold(ctx, k, *df.actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "releases now need %d distinct trusted signatures\n", k)
		return nil
	})
}

func releasePublish(args []string, stdout, stderr io.Writer) error {
	fs, df := newMultiDBFlags("release publish", "[--verifier URL | --db D]... [--json] ENVELOPE.json", stdout, stderr)
	if err := fs.args(1, 1).parse(args); err != nil {
		return err
	}
	env, err := readEnvelope(fs.Arg(0))
	if err != nil {
		return err
	}
	return df.withDBs(func(ctx context.Context, dbs []verifierDB) error {
		// Every verifier checks the signatures against its own trusted
		// keys and threshold: publish to each, report each.
		var views []publishView
		var failed []string
		for _, v := range dbs {
			ver, err := v.db.PublishRelease(ctx, env, *df.actor)
			if err != nil {
				failed = append(failed, v.path)
				views = append(views, publishView{DB: v.path, Error: err.Error()})
				if !*df.json {
					fmt.Fprintf(stdout, "%s: NOT published: %v\n", v.path, err)
				}
				continue
			}
			view := newManifestView(env, ver.Digest, ver.Manifest, ver.SignedBy)
			views = append(views, publishView{DB: v.path, Published: &view})
			if !*df.json {
				fmt.Fprintf(stdout, "%s: published %s %s (signed by %s)\n", v.path, ver.Manifest.Name, ver.Manifest.Release, strings.Join(ver.SignedBy, ", "))
			}
		}
		if *df.json {
			if len(dbs) == 1 && views[0].Published != nil {
				if err := printJSON(stdout, views[0].Published); err != nil {
					return err
				}
			} else if err := printJSON(stdout, views); err != nil {
				return err
			}
		} else if len(failed) < len(dbs) {
			fmt.Fprintln(stdout)
			printManifest(stdout, *firstPublished(views))
		}
		if len(failed) > 0 {
			return fmt.Errorf("release not published to %d of %d verifier databases: %s", len(failed), len(dbs), strings.Join(failed, ", "))
		}
		return nil
	})
}

// publishView is one verifier database's outcome of release publish
// --json with several --db.
type publishView struct {
	DB        string        `json:"db"`
	Published *manifestView `json:"published,omitempty"`
	Error     string        `json:"error,omitempty"`
}

func firstPublished(views []publishView) *manifestView {
	for _, v := range views {
		if v.Published != nil {
			return v.Published
		}
	}
	return nil
}

// releaseList prints the published releases.
var releaseList = listCommand("release list", "DIGEST\tNAME\tRELEASE\tPUBLISHED\tWITHDRAWN", verifierState.Releases, func(tw io.Writer, r verifier.ReleaseInfo) {
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Digest, r.Name, r.Release, r.Published.Format(time.RFC3339), fmtTime(r.Withdrawn))
})

func releaseWithdraw(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("release withdraw", "[--verifier URL | --db D] DIGEST", stdout, stderr)
	if err := fs.args(1, 1).parse(args); err != nil {
		return err
	}
	return df.withDB(func(ctx context.Context, db verifierState) error {
		if err := db.WithdrawRelease(ctx, fs.Arg(0), *df.actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "withdrawn %s\n", fs.Arg(0))
		return nil
	})
}
