package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pki"
)

func init() {
	register(command{name: "enroll", summary: "enroll an appliance's TPM (EK certificate or public key) with the verifier", run: runEnroll})
	register(command{name: "ekroot", summary: "TPM manufacturer CAs trusted for EK certificates: add, list", run: runEKRoot})
	register(command{name: "appliances", summary: "list or show enrolled appliances", run: runAppliances})
	register(command{name: "revoke", summary: "revoke an appliance (refused at its next attestation; it zeroizes)", run: runRevoke})
}

func runEKRoot(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, "usage: embassyctl ekroot add [--verifier URL | --db D] CERT.pem...\n       embassyctl ekroot list [--verifier URL | --db D] [--json]\n",
		map[string]subcommand{
			"add": ekRootAdd,
			"list": listCommand("ekroot list", "SHA-256\tSUBJECT", verifierState.EKRoots, func(tw io.Writer, r verifier.EKRoot) {
				fmt.Fprintf(tw, "%s\t%s\n", r.Fingerprint, r.Subject)
			}),
		})
}

func ekRootAdd(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("ekroot add", "[--verifier URL | --db D] CERT.pem...", stdout, stderr)
	if err := fs.args(1, -1).parse(args); err != nil {
		return err
	}
	return df.withDB(func(ctx context.Context, db verifierState) error {
		for _, p := range fs.Args() {
			c, err := pki.ReadCertFile(p)
			if err != nil {
				return err
			}
			if err := db.AddEKRoot(ctx, c, *df.actor); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "trusted %s\n", c.Subject)
		}
		return nil
	})
}

func runAppliances(args []string, stdout, stderr io.Writer) error {
	usage := "usage: embassyctl appliances list [--verifier URL | --db D] [--json]\n       embassyctl appliances show [--verifier URL | --db D] [--json] ID\n       embassyctl appliances server-cert [--verifier URL | --db D] ID > ca-cert.pem\n"
	return subcommands(args, stdout, stderr, usage, map[string]subcommand{
		"list": listCommand("appliances list", "ID\tSTATE\tRELEASE\tEPOCH\tLEASE UNTIL", verifierState.Appliances, func(tw io.Writer, a verifier.ApplianceInfo) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", a.ID, a.State(), orDash(a.Release), a.LastEpoch, fmtTime(a.LeaseUntil))
		}),
		"show": withAppliance("show", "[--verifier URL | --db D] [--json]", func(a *verifier.ApplianceInfo, df dbFlags, stdout io.Writer) error {
			if *df.json {
				return printJSON(stdout, a)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "id\t%s\nstate\t%s\nEK sha256\t%s\nEK certificate\t%v\ncreated\t%s\n", a.ID, a.State(), a.EKSHA256, a.HasEKCert, a.Created.Format(time.RFC3339))
			ak := a.AKName
			if ak == "" {
				ak = "- (not activated)"
			}
			fmt.Fprintf(tw, "AK name\t%s\nactivated\t%s\nlast epoch\t%d\nrelease\t%s\nlease until\t%s\n", ak, fmtTime(a.Activated), a.LastEpoch, a.Release, fmtTime(a.LeaseUntil))
			if a.Revoked != nil {
				fmt.Fprintf(tw, "revoked\t%s by %s: %s\n", fmtTime(a.Revoked), a.RevokedBy, a.RevokReason)
			}
			if a.ServerCert != nil {
				fmt.Fprintf(tw, "NBD server sha256\t%s (reported %s by %s)\n", a.ServerCertSHA256, fmtTime(a.ServerCertRecorded), a.ServerCertRelease)
			} else {
				fmt.Fprintf(tw, "NBD server sha256\t- (not reported yet)\n")
			}
			tw.Flush()
			if len(a.Baseline) > 0 {
				fmt.Fprintln(stdout, "\nfirmware baseline\nPCR  SHA-256")
				for i := 0; i < 24; i++ {
					if v, ok := a.Baseline[strconv.Itoa(i)]; ok {
						fmt.Fprintf(stdout, "%-4d %s\n", i, v)
					}
				}
			}
			return nil
		}),
		"server-cert": withAppliance("server-cert", "[--verifier URL | --db D]", func(a *verifier.ApplianceInfo, _ dbFlags, stdout io.Writer) error {
			if a.ServerCert == nil {
				return fmt.Errorf("%w: appliance %q has not reported an NBD server identity in an admitted heartbeat yet", verifier.ErrNotFound, a.ID)
			}
			return pem.Encode(stdout, &pem.Block{Type: "CERTIFICATE", Bytes: a.ServerCert})
		}),
	})
}

// withAppliance makes the "appliances SUB [flags] ID" command that loads
// appliance ID from the verifier database and hands it to show.
func withAppliance(sub, flags string, show func(a *verifier.ApplianceInfo, df dbFlags, stdout io.Writer) error) subcommand {
	return func(args []string, stdout, stderr io.Writer) error {
		fs, df := newDBFlags("appliances "+sub, flags+" ID", stdout, stderr)
		if err := fs.args(1, 1).parse(args); err != nil {
			return err
		}
		return df.withDB(func(ctx context.Context, db verifierState) error {
			a, err := db.Appliance(ctx, fs.Arg(0))
			if err != nil {
				return err
			}
			return show(a, df, stdout)
		})
	}
}

func runRevoke(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("revoke", "[--verifier URL | --db D] --reason TEXT ID", stdout, stderr)
	reason := fs.String("reason", "", "why (recorded in the audit log)")
	if err := fs.require("reason").args(1, 1).parse(args); err != nil {
		return err
	}
	if strings.TrimSpace(*reason) == "" {
		return fs.usageError("--reason must say why")
	}
	return df.withDB(func(ctx context.Context, db verifierState) error {
		if err := db.Revoke(ctx, fs.Arg(0), *reason, *df.actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s: refused at its next attestation (at the latest when its lease ends)\n", fs.Arg(0))
		return nil
	})
}
