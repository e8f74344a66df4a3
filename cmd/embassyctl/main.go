// Command embassyctl is the operators' CLI: stores, enrollment, releases,
// revocation and the audit log.
//
// Each area of the CLI lives in its own file and registers its top-level
// command with register; main only dispatches. Every command declares and
// parses its flags with newFlags (flags.go), so all of them spell flags
// --name, print their usage on stdout and exit 0 for --help, and print it on
// stderr and exit 2 for wrong arguments. A flag means the same in every
// command that takes it (--kek, --counter, --out, --verifier, --db,
// --json).
//
// The verifier-state commands (enroll, ekroot, appliances, revoke, audit,
// release trust/threshold/publish/list/withdraw) talk to the verifier's
// admin API with an operator certificate (--verifier, --cert, --key,
// --ca); --db works on the database directly, for recovery only.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one top-level embassyctl command.
type command struct {
	name    string
	summary string
	// run executes the command with the arguments after its name. It returns
	// errUsage (possibly wrapped) when the arguments are wrong.
	run subcommand
}

var commands = map[string]command{}

func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("embassyctl: command registered twice: " + c.name)
	}
	commands[c.name] = c
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	// The same conventions as subcommands and cmdFlags.parse: help on
	// stdout, exit 0; a usage error on stderr, exit 2.
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "embassyctl: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if err := c.run(args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "embassyctl %s: %v\n", c.name, err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: embassyctl <command> [flags] [args]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'embassyctl <command> --help' for a command's flags.")
}
