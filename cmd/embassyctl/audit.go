package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/dataembassy/embassy/attest/verifier"
)

func init() {
	register(command{name: "audit", summary: "the verifier's hash-chained audit log: list, verify", run: runAudit})
}

func runAudit(args []string, stdout, stderr io.Writer) error {
	usage := `usage: embassyctl audit list [--verifier URL | --db D] [--appliance ID] [--limit N] [--json]
       embassyctl audit verify [--verifier URL | --db D] [--head SEQ:HASH] [--json]

verify walks the whole chain and reports records whose content changed and
records deleted from the middle; with --head (printed by an earlier verify)
it also reports a log truncated after that record. Exit status 1 when any
problem is found.
`
	return subcommands(args, stdout, stderr, usage, map[string]subcommand{
		"list":   auditList,
		"verify": auditVerify,
	})
}

func auditList(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("audit list", "[--verifier URL | --db D] [--appliance ID] [--limit N] [--json]", stdout, stderr)
	app := fs.String("appliance", "", "only this appliance's records")
	limit := fs.Int("limit", 50, "newest N records (0: all)")
	if err := fs.parse(args); err != nil {
		return err
	}
	return df.withDB(func(ctx context.Context, db verifierState) error {
		recs, err := db.AuditRecords(ctx, verifier.AuditFilter{Appliance: *app, Limit: *limit})
		if err != nil {
			return err
		}
		return printRows(stdout, *df.json, recs, "SEQ\tTIME\tACTOR\tAPPLIANCE\tACTION\tOUTCOME\tCHECK\tPCR\tDETAIL", func(tw io.Writer, r verifier.AuditRecord) {
			pcr := "-"
			if r.PCR >= 0 {
				pcr = strconv.Itoa(r.PCR)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Format(time.RFC3339), r.Actor, orDash(r.Appliance), r.Action, r.Outcome, orDash(r.Check), pcr, r.Detail)
		})
	})
}

func auditVerify(args []string, stdout, stderr io.Writer) error {
	fs, df := newDBFlags("audit verify", "[--verifier URL | --db D] [--head SEQ:HASH] [--json]", stdout, stderr)
	head := fs.String("head", "", "a head recorded earlier (SEQ:HASH) that must still be in the log")
	if err := fs.parse(args); err != nil {
		return err
	}
	var seq int64
	var hash string
	if *head != "" {
		s, h, ok := strings.Cut(*head, ":")
		n, err := strconv.ParseInt(s, 10, 64)
		if !ok || err != nil || n < 1 || len(h) != 64 {
			return fs.usageError("--head must be SEQ:HASH")
		}
		seq, hash = n, strings.ToLower(h)
	}
	return df.withDB(func(ctx context.Context, db verifierState) error {
		rep, err := db.VerifyAudit(ctx, seq, hash)
		if err != nil {
			return err
		}
		if *df.json {
			if err := printJSON(stdout, rep); err != nil {
				return err
			}
		} else {
			for _, p := range rep.Problems {
				fmt.Fprintf(stdout, "record %d: %s: %s\n", p.Seq, strings.ToUpper(p.Kind), p.Detail)
			}
			fmt.Fprintf(stdout, "%d records, head %d:%s\n", rep.Records, rep.HeadSeq, rep.HeadHash)
		}
		if len(rep.Problems) > 0 {
			return fmt.Errorf("audit log damaged: %d problem(s)", len(rep.Problems))
		}
		if !*df.json {
			fmt.Fprintln(stdout, "OK: chain intact")
		}
		return nil
	})
}
